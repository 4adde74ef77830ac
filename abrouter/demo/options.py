"""`abrouter demo`'s options: their defaults, read by the CLI without importing the demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Options:
    duration_s: float = 60.0
    seed: int = 1
    lift: float = 0.1
    users: int = 5000
    rps: float = 300.0
    out: Path = Path("abrouter-demo")
    every_s: float = 2.0
