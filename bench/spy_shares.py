"""Shares of a py-spy raw profile (collapsed stacks, ``py-spy record -f raw``): inclusive per function, and leaves.

    .venv/bin/python bench/spy_shares.py OUT [N]      # e.g. OUT from bench/grpc_profile.sh; N rows (60)

Inclusive: the share of all samples with the function anywhere on the stack (counted once per stack);
leaf: the share with it on top. Shares are of all samples, idle threads included: a thread pool's idle
worker shows as a large ``_worker``/``SimpleQueue.get`` entry; read the main thread's busy share as
``run_forever`` minus ``epoll_pwait``.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path


def shares(lines: list[str]) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, inclusive counts per function name, leaf counts per function and file)."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        names = {re.sub(r"\s*\(.*\)$", "", re.sub(r" \(.*?:\d+\)", "", f)) for f in frames}
        for name in names:
            inclusive[name] += n
        leaf[re.sub(r" \((.*?):\d+\)", r" (\1)", frames[-1])] += n
    return total, inclusive, leaf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", type=Path)
    p.add_argument("rows", type=int, nargs="?", default=60)
    args = p.parse_args()
    total, inclusive, leaf = shares(args.profile.read_text().splitlines())
    print("samples", total)
    print("== inclusive")
    for name, n in inclusive.most_common(args.rows):
        print(f"{100 * n / max(1, total):5.1f}% {name}")
    print("== leaf")
    for name, n in leaf.most_common(40):
        print(f"{100 * n / max(1, total):5.1f}% {name}")


if __name__ == "__main__":
    main()
