"""flush.lua is assembled from `lua/commands` and `lua/includes`; its batch format is versioned."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import redis.asyncio

from abrouter.contract import keys
from abrouter.router.errors import BatchRejected
from abrouter.router.eventlog import script
from abrouter.router.eventlog.events import BATCH_VERSION, Exposure
from abrouter.router.eventlog.log import APPLIED, FlushScript
from tests.router.eventlog.test_eventlog import _batch, make_experiment


def test_every_include_is_used_and_none_is_left_unresolved() -> None:
    command = (script.LUA_DIR / "commands" / "flush.lua").read_text()
    included = set(script._INCLUDE.findall(command))
    assert included == {p.stem for p in (script.LUA_DIR / "includes").glob("*.lua")}
    assert "--- @include" not in script.FLUSH_SCRIPT
    for part in included:
        assert (script.LUA_DIR / "includes" / f"{part}.lua").read_text() in script.FLUSH_SCRIPT


async def test_a_batch_of_an_unknown_format_version_is_refused_whole(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    exp = make_experiment(experiment_name)
    flush = FlushScript(redis_client, keys.Keys(experiment_name))
    await flush.load()
    batch = _batch(exp, [Exposure("r1", "u1", "control", 1, time.time(), 200, 1.0, False)], 1)
    assert json.loads(batch.payload)["v"] == BATCH_VERSION
    newer = dataclasses.replace(batch, payload=batch.payload.replace(f'"v":{BATCH_VERSION}', '"v":99', 1))
    with pytest.raises(BatchRejected, match="batch format version 99"):
        await flush.apply(newer, allow_gap=False)
    assert await redis_client.exists(*keys.Keys(experiment_name).all()) == 0
    old = json.loads(batch.payload)
    del old["v"]  # a batch from before versions (a spill file of an older router): version 1
    assert (await flush.apply(dataclasses.replace(batch, payload=json.dumps(old)), allow_gap=False))[0] == APPLIED
