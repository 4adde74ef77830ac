"""The README's two quick-start commands are the ones that work: CI runs the second."""

import re
from pathlib import Path

import abrouter.cli

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)[:2]


def test_ci_runs_exactly_the_readme_test_command():
    _, test_command = quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_command


def test_readme_run_command_uses_flags_the_cli_knows():
    run_command, _ = quick_start_commands()
    argv = run_command.split(".venv/bin/abrouter ", 1)[1].split()
    args = abrouter.cli.build_parser().parse_args(argv)
    assert args.command == "demo" and args.lift == 0.1 and args.users == 5000  # embedded defaults
