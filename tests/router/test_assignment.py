"""Properties of the pure assignment function; the proxy tests repeat them over HTTP."""

import json
import math
import random
import subprocess
import sys
from collections import Counter

import pytest
from scipy.stats import chisquare

from abrouter.router.assignment import Assigner, _hash64, _mix64, _unit_interval

UNITS = [f"user-{i}" for i in range(20_000)]


def assignments(a: Assigner, units=UNITS) -> list[int]:
    return [a.assign(u) for u in units]


@pytest.mark.parametrize("weights", [(50, 50), (90, 10), (1, 2, 7), (25, 25, 25, 25)])
def test_split_matches_weights(weights):
    a = Assigner("exp", tuple(f"v{i}" for i in range(len(weights))), tuple(float(w) for w in weights))
    counts = Counter(assignments(a))
    observed = [counts[i] for i in range(len(weights))]
    expected = [len(UNITS) * w / sum(weights) for w in weights]
    assert chisquare(observed, expected).pvalue > 0.001, observed


def test_rendezvous_is_not_biased_like_w_times_hash():
    # Iter8's w*hash scoring turns 90/10 into ~94/6; ours must stay at 90/10.
    a = Assigner("exp", ("a", "b"), (90.0, 10.0))
    share = Counter(assignments(a))[1] / len(UNITS)
    assert abs(share - 0.10) < 0.006


@pytest.mark.parametrize("names", [("control", "candidate"), ("control", "b", "c")])
def test_same_variant_in_another_process(names):
    weights = tuple(float(i + 1) for i in range(len(names)))
    here = assignments(Assigner("salty", names, weights), UNITS[:2000])
    code = (
        "import json, sys; from abrouter.router.assignment import Assigner; "
        f"a = Assigner('salty', {names!r}, {weights!r}); "
        "print(json.dumps([a.assign(f'user-{i}') for i in range(2000)]))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
        cwd=".",
    )
    assert json.loads(other.stdout) == here


def test_salt_changes_the_assignment():
    names, w = ("a", "b"), (1.0, 1.0)
    same = sum(x == y for x, y in zip(assignments(Assigner("s1", names, w)), assignments(Assigner("s2", names, w))))
    assert 0.45 < same / len(UNITS) < 0.55  # independent salts agree only by chance


def _moves(before: Assigner, after: Assigner) -> Counter:
    return Counter((x, y) for x, y in zip(assignments(before), assignments(after)) if x != y)


def test_two_variant_ramp_only_moves_into_the_raised_variant():
    names = ("control", "candidate")
    moves = _moves(Assigner("e", names, (90.0, 10.0)), Assigner("e", names, (50.0, 50.0)))
    assert set(moves) == {(0, 1)}
    assert abs(moves[(0, 1)] / len(UNITS) - 0.40) < 0.02  # 40% of units had to move, no more


def test_three_variant_ramp_never_moves_between_unchanged_variants():
    names = ("control", "b", "c")
    before = Assigner("e", names, (40.0, 40.0, 20.0))
    after = Assigner("e", names, (40.0, 40.0, 60.0))  # only c rises
    moves = _moves(before, after)
    assert set(moves) <= {(0, 2), (1, 2)} and moves
    # and lowering one weight only moves units out of it, spread over the others
    down = _moves(before, Assigner("e", names, (40.0, 40.0, 5.0)))
    assert set(down) <= {(2, 0), (2, 1)} and down


def test_zero_weight_gets_nobody():
    a = Assigner("e", ("a", "b", "c"), (1.0, 0.0, 1.0))
    assert 1 not in set(assignments(a, UNITS[:5000]))


def test_random_assignment_follows_weights():
    a = Assigner("e", ("a", "b"), (90.0, 10.0))
    rng = random.Random(7)
    counts = Counter(a.assign_random(rng) for _ in range(20_000))
    assert chisquare([counts[0], counts[1]], [18_000, 2_000]).pvalue > 0.001


@pytest.mark.parametrize("weights", [(0.0, 0.0), (-1.0, 2.0), (float("nan"), 1.0)])
def test_invalid_weights_are_refused(weights):
    with pytest.raises(ValueError):
        Assigner("e", ("a", "b"), weights)


def _reference_assign(assigner: Assigner, unit: str) -> int:
    """The rendezvous rule as written before it was inlined: _mix64 per arm, zero weights skipped."""
    h = _hash64(unit.encode("utf-8", "surrogatepass"), assigner._key)  # type: ignore[attr-defined]
    best, best_score = 0, -1.0
    for i, (seed, weight) in enumerate(zip(assigner._seeds, assigner.weights)):  # type: ignore[attr-defined]
        if weight <= 0:
            continue
        score = -weight / math.log(((_mix64(h ^ seed) >> 11) + 0.5) / float(1 << 53))
        if score > best_score:
            best, best_score = i, score
    return best


@pytest.mark.parametrize("weights", [(50, 50), (90, 10), (0, 30, 70), (1, 1, 1, 0, 5)])
def test_assign_is_the_reference_rule_unit_for_unit(weights):
    assigner = Assigner("salt", tuple(f"v{i}" for i in range(len(weights))), tuple(float(w) for w in weights))
    for n in range(3000):
        unit = f"user-{n}"
        assert assigner.assign(unit) == _reference_assign(assigner, unit)


def _signed(u: int) -> int:
    return u - (1 << 64) if u >> 63 else u


@pytest.mark.parametrize("seed", [0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 0xBF58476D1CE4E5B9])
def test_the_signed_mix_is_splitmix64_on_every_bit_pattern(seed):
    # The compiled build mixes in wrapping machine words, pure Python in big ints cut to 64 bits: both must be
    # _mix64 exactly, at the extremes of the signed range and where the products overflow.
    rng = random.Random(seed)
    units = [0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, *(rng.getrandbits(64) for _ in range(2000))]
    for h in units:
        expected = ((_mix64(h ^ seed) >> 11) + 0.5) / float(1 << 53)
        assert _unit_interval(_signed(h), _signed(seed)) == expected, (h, seed)
