"""The event log's CPU per exposure in one process, no Redis: recording, encoding and freeing a batch.

What a saturated router pays per gRPC call for its event log, apart from the Redis client:
build the `Exposure` (as `exchange.Exchange.finish` does), `EventLog.record_exposure` it (a
new random unit of 1..1,000,000 each, as `h2_load.py` sends, with the recent-units memory
full), cut a batch every `log.BATCH_EVENTS`, encode it as the flush round does
(`EventLog._encode_cut`, slices and all) and drop it again (what freeing it costs counts too).
Prints one JSON line per run: µs per exposure for recording, encoding, and both.

With ``--before TREE`` (a checkout with its own ``.venv``, e.g. ``/tmp/before17``) each
round runs this script once under TREE's interpreter and once under this checkout's,
alternating, and prints both and their ratio: the same machine load for each.

    .venv/bin/python bench/eventlog_cost.py --before /tmp/before17 --rounds 5
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()

SPEC = """\
name: grpc-bench
unit: {header: X-User-Id}
variants:
  - {name: control, upstream: "http://127.0.0.1:9", weight: 50}
  - {name: candidate, upstream: "http://127.0.0.1:9", weight: 50}
metrics:
  - {name: conversion, kind: binary}
"""


async def measure(batches: int) -> dict[str, Any]:
    """µs per exposure over `batches` batches, after filling the recent-units memory."""
    from abrouter.contract import experiment as model
    from abrouter.router.eventlog import log as log_
    from abrouter.router.eventlog.events import Exposure

    tmp = Path(tempfile.mkdtemp(prefix="eventlog-cost-"))
    (tmp / "exp.yaml").write_text(SPEC)
    log = log_.EventLog(redis_url="redis://127.0.0.1:9/0", experiment=model.load(tmp / "exp.yaml"), spill_dir=tmp)
    size = log_.BATCH_EVENTS
    rng = random.Random(7)
    mix = 0x9E3779B97F4A7C15  # a unit's hash: 16 hex digits, as `keys.unit_hash` makes

    def draw() -> list[tuple[str, str, str]]:
        """A batch's request ids (42 base64url characters, as `requestid` issues), units (a random
        one of 1..1,000,000 each) and their variants, drawn untimed."""
        units = [rng.randint(1, 1_000_000) for _ in range(size)]
        ids = [base64.urlsafe_b64encode(rng.randbytes(32)).decode()[:42] for _ in units]
        return [(i, f"{u * mix % 2**64:016x}", "control" if u % 2 else "candidate") for i, u in zip(ids, units)]

    def record(start: int, drawn: list[tuple[str, str, str]]) -> None:
        for i, (request_id, unit, variant) in enumerate(drawn, start):
            log.record_exposure(
                Exposure(
                    request_id=request_id,
                    unit_hash=unit,
                    variant=variant,
                    epoch=1,
                    ts=time.time(),
                    status=0,
                    latency_ms=0.123 + (i % 97) * 0.01,
                    error=False,
                    anonymous=False,
                )
            )

    async def encode() -> None:
        log._cut_batch()
        await log._encode_cut()
        log._delivery.outbox.clear()

    for b in range(log_.LRU_SIZE // size + 5):  # the recent-units memory full, as it is saturated
        record(b * size, draw())
        await encode()
    from abrouter.router import serving

    serving.settle_heap()  # as `abrouter serve` does after start-up
    rec = enc = 0.0
    for b in range(batches):
        drawn = draw()
        t0 = time.process_time()
        record(b * size, drawn)
        t1 = time.process_time()
        await encode()
        t2 = time.process_time()
        rec, enc = rec + t1 - t0, enc + t2 - t1
    n = batches * size
    return {
        "record_us": round(rec / n * 1e6, 3),
        "encode_us": round(enc / n * 1e6, 3),
        "total_us": round((rec + enc) / n * 1e6, 3),
    }


def run_under(python: str, batches: int) -> dict[str, Any]:
    out = subprocess.run(
        [python, str(HERE), "--batches", str(batches)], check=True, capture_output=True, text=True
    ).stdout
    doc: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return doc


def compare(before: Path, rounds: int, batches: int) -> None:
    mine = str(HERE.parent.parent / ".venv" / "bin" / "python")
    theirs = str(before / ".venv" / "bin" / "python")
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for _ in range(rounds):
        runs["before"].append(run_under(theirs, batches))
        runs["after"].append(run_under(mine, batches))
    summary = {}
    for name, docs in runs.items():
        summary[name] = {k: round(statistics.median(d[k] for d in docs), 3) for k in docs[0]}
    summary["after/before"] = {k: round(summary["after"][k] / summary["before"][k], 3) for k in summary["after"]}
    print(json.dumps({"rounds": rounds, "batches": batches, **summary, "runs": runs}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=20, help="timed batches of log.BATCH_EVENTS exposures")
    p.add_argument("--before", type=Path, help="a checkout with its own .venv to alternate with")
    p.add_argument("--rounds", type=int, default=3, help="with --before: runs of each")
    a = p.parse_args()
    if a.before is not None:
        compare(a.before, a.rounds, a.batches)
        return
    from abrouter.router import serving

    loop = serving.new_loop()
    print(json.dumps(loop.run_until_complete(measure(a.batches))))
    loop.close()


if __name__ == "__main__":
    sys.exit(main())
