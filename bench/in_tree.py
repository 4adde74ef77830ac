"""Run a script, or ``-m abrouter``, with `abrouter` imported from another tree than this venv's editable install.

    .venv/bin/python bench/in_tree.py TREE bench/http_relay_cost.py ARGS...
    .venv/bin/python bench/in_tree.py TREE -m abrouter serve ...

TREE is a directory holding an `abrouter` package: a checkout built in place (``pip install
-e .`` there, its mypyc modules beside the sources) or an unpacked wheel. ``PYTHONPATH`` is not
enough: the editable install's finder sits on ``sys.meta_path``, ahead of every path entry,
so it is set aside here first.
"""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.meta_path[:] = [
        finder
        for finder in sys.meta_path
        if "editable" not in getattr(finder, "__module__", "") and "editable" not in type(finder).__module__
    ]
    tree, *rest = sys.argv[1:]
    sys.path.insert(0, tree)
    if rest[0] == "-m":
        sys.argv = rest[1:]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
