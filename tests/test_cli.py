"""The `abrouter` command: bad input is exit code 2 with one line, never a traceback.

Every test but one calls `abrouter.cli.main(argv)` in this process, as the `abrouter`
script does, and reads what it printed: a child Python would pay the imports again for
each call. `test_the_installed_entry_point_runs` is the one that starts a process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from abrouter import cli

ROOT = Path(__file__).resolve().parents[1]


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Iterator[Run]:
    """`abrouter ARGV` in this process: the exit code, stdout and stderr.

    Should a check regress, the command must fail, not serve forever in the test: serve
    and example-model are given a port another socket holds, and the demo a --out that is
    a file (a later --port or --out in ARGV wins).
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        not_a_dir = tmp_path / "not-a-directory"
        not_a_dir.write_text("")
        guard = {
            "serve": ["--host", "127.0.0.1", "--port", str(taken.getsockname()[1])],
            "example-model": ["--host", "127.0.0.1", "--port", str(taken.getsockname()[1])],
            "demo": ["--out", str(not_a_dir)],
        }

        def abrouter(*argv: str) -> tuple[int, str, str]:
            if argv and "--help" not in argv:
                argv = (argv[0], *guard.get(argv[0], []), *argv[1:])
            code = cli.main(list(argv))
            out, err = capsys.readouterr()
            return code, out, err

        yield abrouter


def one_line_error(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "name: x\nunit: {header: X}\nvariants:\n - {name: a, upstream: 'http://a', weight: -5}\n"
            " - {name: b, upstream: 'http://b', weight: 1}\n",
            "exp.yaml, line 4: variants[0].weight: must be >= 0, got -5",
        ),
        ("name: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_bad_config_is_exit_2_with_one_line(tmp_path, run, content, message):
    config = tmp_path / "exp.yaml"
    config.write_text(content)
    code, _, err = run("serve", "--config", str(config), "--no-event-log")
    assert code == 2
    assert message in one_line_error(err) and err.startswith("abrouter: error: ")


SPEC = """\
name: x
unit: {header: X}
variants:
  - name: control
    upstream: http://127.0.0.1:1
    weight: 50
  - name: candidate
    upstream: http://127.0.0.1:2
    {typo}: 50
{extra}
"""


@pytest.mark.parametrize(
    "typo, extra, message",
    [
        # A misspelt required key: the path of the missing one, the misspelling, and the file and line.
        ("wieght", "", "exp.yaml, line 7: variants[1].weight: is required; found 'wieght' (did you mean 'weight'?)"),
        ("weight", "weigths: 3", "exp.yaml, line 10: weigths: unknown key; known: allow_force_variant, analysis,"),
        ("weight", "variant: []", "exp.yaml, line 10: variant: unknown key (did you mean 'variants'?)"),
        ("weight", "analysis: {alpah: 0.1}", "exp.yaml, line 10: analysis.alpah: unknown key (did you mean 'alpha'?)"),
    ],
)
def test_schema_errors_name_the_file_the_line_and_the_key_meant(tmp_path, run, typo, extra, message):
    config = tmp_path / "exp.yaml"
    config.write_text(SPEC.replace("{typo}", typo).replace("{extra}", extra))
    for command in (["serve", "--no-event-log"], ["analyze"], ["report"]):
        code, _, err = run(*command, "--config", str(config))
        assert code == 2 and message in one_line_error(err), (command, err)


def test_missing_config_and_bad_flags(tmp_path, run):
    code, _, err = run("serve", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read" in one_line_error(err)
    code, _, err = run("serve", "--flush-interval", "0")
    assert code == 2 and "argument --flush-interval: must be a finite number > 0, got '0'" in one_line_error(err)
    code, _, err = run("frobnicate")
    assert code == 2 and "invalid choice" in one_line_error(err)


@pytest.mark.parametrize("command", ["serve", "analyze", "report", "demo"])
def test_a_redis_url_without_a_scheme_is_one_line(tmp_path, run, monkeypatch, command):
    config = tmp_path / "exp.yaml"
    config.write_text(SPEC.replace("{typo}", "weight").replace("{extra}", ""))
    if command == "demo":  # the demo takes its Redis from the environment only
        monkeypatch.setenv("REDIS_URL", "localhost:6379")
        argv = ["demo", "--out", str(tmp_path / "demo")]
    else:
        argv = [command, "--config", str(config), "--redis-url", "localhost:6379"]
    code, _, err = run(*argv)
    assert code == 2, err
    assert "must be a URL like redis://HOST:6379/0" in one_line_error(err) and "'localhost:6379'" in err
    assert not (tmp_path / "demo").exists(), "the demo said no before it started anything"


def test_a_password_in_a_bad_redis_url_is_masked(run):
    code, _, err = run("analyze", "--config", "x.yaml", "--redis-url", "redis//user:hunter2@host")
    assert code == 2 and "hunter2" not in one_line_error(err)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--header-timeout", "nan", "must be a finite number, got 'nan'"),
        ("--idle-timeout", "inf", "must be a finite number, got 'inf'"),
        ("--body-timeout", "-1", "must be a finite number > 0, got '-1'"),
        ("--reload-interval", "soon", "must be a number, got 'soon'"),
        ("--max-connections", "0", "must be an integer >= 1, got '0'"),
        ("--port", "70000", "must be a TCP port 0..65535, got '70000'"),
        ("--shards", "0", "must be 'auto' or an integer 1..256, got '0'"),
        ("--shards", "many", "must be 'auto' or an integer 1..256, got 'many'"),
    ],
)
def test_bad_numbers_are_one_line_naming_the_flag(run, flag, value, message):
    code, _, err = run("serve", flag, value)
    assert code == 2 and f"argument {flag}: {message}" in one_line_error(err), err


@pytest.mark.parametrize(
    "argv",
    [
        ["analyze", "--config", "x.yaml", "--every", "nan"],
        ["demo", "--duration", "inf"],
        ["example-model", "--delay-ms", "-3"],
    ],
)
def test_every_command_checks_its_numbers(run, argv):
    code, _, err = run(*argv)
    assert code == 2 and "must be a finite number" in one_line_error(err), err


def test_help_explains_each_command(run):
    code, out, _ = run("--help")
    assert code == 0
    for command in ("serve", "analyze", "plan", "report", "demo"):
        assert command in out
    code, serve, _ = run("serve", "--help")
    assert code == 0 and "--redis-url" in serve and "epoch" in serve and "examples:" in serve
    for flag in ("--header-timeout", "--body-timeout", "--idle-timeout", "--max-connections", "--shards"):
        assert flag in serve


def test_client_limits_read_the_environment(run, monkeypatch):
    monkeypatch.setenv("ABROUTER_IDLE_TIMEOUT", "4.5")
    _, out, _ = run("serve", "--help")
    assert "else 4.5)" in " ".join(out.split())
    monkeypatch.setenv("ABROUTER_IDLE_TIMEOUT", "nan")  # checked like the flag
    code, _, err = run("serve", "--no-event-log")
    assert code == 2 and "argument --idle-timeout: must be a finite number, got 'nan'" in one_line_error(err)


def test_the_shard_count_reads_the_environment(run, monkeypatch):
    monkeypatch.setenv("ABROUTER_SHARDS", "4")
    _, out, _ = run("serve", "--help")
    assert "else 4)" in " ".join(out.split())
    monkeypatch.setenv("ABROUTER_SHARDS", "257")  # checked like the flag
    code, _, err = run("serve", "--no-event-log")
    assert code == 2 and "argument --shards: must be 'auto' or an integer 1..256, got '257'" in one_line_error(err)


def test_a_real_process_imports_only_what_the_command_needs():
    """The one test through a real process (the others reuse this interpreter's imports).

    `main` registers every command, and serve's runtime loads, without importing
    statistics, plotting or the Kubernetes client; a user's mistake is one line on stderr
    and exit code 2.
    """
    code = (
        "import sys; from abrouter import cli; "
        "code = cli.main(['serve', '--redis-url', 'localhost:6379']); "
        "import abrouter.router.serving; "  # what serve runs
        "print(sorted(m for m in ('numpy', 'scipy', 'kubernetes', 'matplotlib', 'rich') if m in sys.modules)); "
        "sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout.strip() == "[]", result
    assert result.stderr.startswith("abrouter serve: error: argument --redis-url:") and result.stderr.count("\n") == 1


def test_several_configs_that_clash_are_exit_2_naming_both(tmp_path, run):
    def write(file: str, name: str, match: str) -> str:
        spec = SPEC.replace("{typo}", "weight").replace("name: x", f"name: {name}").replace("{extra}", match)
        (tmp_path / file).write_text(spec)
        return str(tmp_path / file)

    a, b = write("a.yaml", "a", "match: {model: recsys}"), write("b.yaml", "b", "match: {model: recsys}")
    code, _, err = run("serve", "--no-event-log", "--config", a, "--config", b)
    assert code == 2 and "experiments 'a' and 'b' match the same requests (model recsys)" in one_line_error(err)
    twin = write("twin.yaml", "a", "match: {model: other}")
    code, _, err = run("serve", "--no-event-log", "--config", a, "--config", twin)
    assert code == 2 and "a second experiment named 'a'" in one_line_error(err)
    code, _, err = run("serve", "--no-event-log", "--config", a, "--selector", "team=recs")
    assert code == 2 and "--selector needs --experiments NAMESPACE" in one_line_error(err)
    code, _, err = run("serve", "--experiments", "Not_A_Namespace")
    assert code == 2 and "argument --experiments: must be a namespace" in one_line_error(err)
