"""Issue 15: no loss that goes unreported, and the right numbers whatever the order of batches.

Each test reproduces one case of the issue against a real Redis (quarantine replay of
many gaps, a Redis that came back with older data, outcomes and covariates that reach
Redis before their exposure or out of report order across two routers, anonymous
requests whose outcome comes in a later batch) and fails on the code before the fix.
"""

from __future__ import annotations

import time

import redis.asyncio

from abrouter.contract import keys
from abrouter.router.eventlog.events import Exposure, Outcome
from abrouter.router.eventlog.log import APPLIED, DUPLICATE, FlushScript
from tests.router.eventlog.test_eventlog import _batch, make_experiment, read_strata


def exposure(unit: str, variant: str = "control", *, anonymous: bool = False) -> Exposure:
    return Exposure(f"r-{unit}", unit, variant, 1, time.time(), 200, 10.0, False, anonymous=anonymous)


def outcome(unit: str, metric: str, value: float, variant: str = "control", **kw: object) -> Outcome:
    return Outcome(unit, variant, 1, metric, value, time.time(), **kw)  # type: ignore[arg-type]


async def test_a_quarantine_replay_of_300_skipped_batches_applies_every_one(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """Before: only the newest 256 gap ranges were kept, so 44 replays were taken for duplicates."""
    exp = make_experiment(experiment_name)
    script = FlushScript(redis_client, keys.Keys(experiment_name))
    await script.load()
    # Odd seqs reach Redis; each even one was quarantined, leaving a gap of one seq.
    for seq in range(1, 602, 2):
        assert (await script.apply(_batch(exp, [exposure(f"u{seq}")], seq), allow_gap=True))[0] == APPLIED
    replays = [
        (await script.apply(_batch(exp, [exposure(f"u{seq}")], seq), allow_gap=True))[0] for seq in range(2, 601, 2)
    ]
    assert replays == [APPLIED] * 300
    strata = await read_strata(redis_client, experiment_name)
    assert strata[(1, "control")].units == 601
    # A second replay of the quarantine file counts nothing.
    assert (await script.apply(_batch(exp, [exposure("u2")], 2), allow_gap=True))[0] == DUPLICATE
    assert not await redis_client.hexists(keys.Keys(experiment_name).producers, "p-test|gaps")
