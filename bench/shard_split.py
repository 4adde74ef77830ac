"""The router's CPU to make one batch's per-shard payloads: split after encoding, or encoded per shard.

    .venv/bin/python bench/shard_split.py                  # ~10 s
    .venv/bin/python bench/shard_split.py --shards 16 --batch 2000 --rounds 20

The same router-made batch (the project's own `Aggregator`, 70% exposures and 30%
outcomes of units drawn from a pool, as in `bench/flush_cost.py`) made ready for a
sharded experiment two ways, interleaved over `--rounds`:

- split (before): encoded whole (`Aggregator.encode`), then `shards.split` (JSON decode
  of the payload, one re-encode per shard), what `ShardedFlush.apply` does for a batch
  without parts;
- parts (after): encoded by an `Aggregator` that knows the shards (`Batch.parts`);
- and, for reference, the batch encoded whole for an unsharded experiment (what either
  way costs at least).

Prints the CPU per batch (median of rounds) and the longest piece of it between two
yields to the event loop (a sliced encoding yields after each slice; the split yields
between shards), both in ms. Pure CPU: no Redis.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from flush_cost import experiment, make_events  # noqa: E402

from abrouter.contract import keys  # noqa: E402
from abrouter.router.eventlog import events, shards  # noqa: E402


def aggregator(recorded: list[events.Event], n: int) -> events.Aggregator:
    exp = experiment("bench-split")
    rules = events.column_rules(exp)
    agg = events.Aggregator(
        keys.metric_order(exp), events.binary_metrics(exp), events.ratio_pairs(exp), **rules, shards=n
    )
    for e in recorded:
        agg.add_exposure(e) if isinstance(e, events.Exposure) else agg.add_outcome(e)
    return agg


def timed(steps: Iterator[object]) -> tuple[float, float]:
    """(total seconds, the longest step) of running `steps` to its end."""
    total = longest = 0.0
    while True:
        start = time.perf_counter()
        try:
            next(steps)
        except StopIteration:
            step = time.perf_counter() - start
            return total + step, max(longest, step)
        step = time.perf_counter() - start
        total, longest = total + step, max(longest, step)


def split_way(recorded: list[events.Event], n: int) -> tuple[float, float]:
    agg = aggregator(recorded, 1)
    steps = agg.encode(producer="bench", seq=1)
    encode, encode_longest = timed(steps)
    batch = aggregator(recorded, 1).batch(producer="bench", seq=1)
    rest, rest_longest = timed(shards.split(batch.payload, batch.events, n, batch.cells))
    return encode + rest, max(encode_longest, rest_longest)


def parts_way(recorded: list[events.Event], n: int) -> tuple[float, float]:
    return timed(aggregator(recorded, n).encode(producer="bench", seq=1))


def main(args: argparse.Namespace) -> None:
    rng = random.Random(15)
    recorded = make_events(rng, args.batch, args.units)
    assert len(aggregator(recorded, args.shards).batch(producer="bench", seq=1).parts) == args.shards
    results: dict[str, list[tuple[float, float]]] = {"split (before)": [], "parts (after)": [], "unsharded": []}
    for _ in range(args.rounds):
        results["split (before)"].append(split_way(recorded, args.shards))
        results["parts (after)"].append(parts_way(recorded, args.shards))
        results["unsharded"].append(parts_way(recorded, 1))
    print(f"one batch of {args.batch} events, {args.units} units, {args.shards} shards, {args.rounds} rounds", end="")
    print(" (medians)\n")
    print("| how | CPU per batch, ms | longest piece between yields, ms |")
    print("|---|---|---|")
    for label, runs in results.items():
        total = statistics.median(t for t, _ in runs) * 1e3
        longest = statistics.median(m for _, m in runs) * 1e3
        print(f"| {label} | {total:.2f} | {longest:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2000, help="events in the batch (the router cuts at BATCH_EVENTS)")
    parser.add_argument("--units", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=keys.CLUSTER_SHARDS)
    parser.add_argument("--rounds", type=int, default=20)
    main(parser.parse_args())
