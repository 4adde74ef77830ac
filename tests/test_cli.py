"""The `abrouter` command: bad input is exit code 2 with one line, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "abrouter", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "name: x\nunit: {header: X}\nvariants:\n - {name: a, upstream: 'http://a', weight: -5}\n"
            " - {name: b, upstream: 'http://b', weight: 1}\n",
            "variants[0].weight: must be >= 0, got -5",
        ),
        ("name: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_bad_config_is_exit_2_with_one_line(tmp_path, content, message):
    config = tmp_path / "exp.yaml"
    config.write_text(content)
    result = run("serve", "--config", str(config), "--no-event-log")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
    assert result.stderr.startswith("abrouter: error: ")


def test_missing_config_and_bad_flags(tmp_path):
    missing = run("serve", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    zero = run("serve", "--flush-interval", "0")
    assert zero.returncode == 2 and "--flush-interval must be > 0" in zero.stderr
    unknown = run("frobnicate")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


def test_help_explains_each_command():
    out = run("--help").stdout
    for command in ("serve", "analyze", "plan"):
        assert command in out
    serve = run("serve", "--help").stdout
    assert "--redis-url" in serve and "epoch" in serve and "examples:" in serve
    for flag in ("--header-timeout", "--body-timeout", "--idle-timeout", "--max-connections"):
        assert flag in serve


def test_client_limits_are_checked_and_read_the_environment():
    zero = run("serve", "--header-timeout", "0")
    assert zero.returncode == 2 and "--header-timeout must be > 0" in zero.stderr
    none = run("serve", "--max-connections", "0")
    assert none.returncode == 2 and "--max-connections must be >= 1" in none.stderr
    env = subprocess.run(
        [sys.executable, "-m", "abrouter", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "ABROUTER_IDLE_TIMEOUT": "4.5"},
    )
    assert "else 4.5)" in " ".join(env.stdout.split())
