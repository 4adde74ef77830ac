"""The root of every exception abrouter raises on purpose.

::

    AbrouterError                 raised on purpose, by any part
    └── UserError                 bad input: a config, a flag, a summary file, a request body;
                                  the CLI answers exit code 2 and one line, the API a 4xx

Each side draws the rest of its tree in its own errors module: `abrouter.router.errors`,
`abrouter.analysis.errors`, `abrouter.kube.errors`. Anything that is not an
`AbrouterError` is a bug: the CLI prints the traceback and exits 1.
"""


class AbrouterError(Exception):
    """Base of every error abrouter raises on purpose."""


class UserError(AbrouterError):
    """The user's input is wrong; the message names the field and says what would be right."""
