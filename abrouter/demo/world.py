"""A synthetic recommendation world with a known ground truth, and the models trained on it.

Pure numpy. Users and items have latent tastes; the probability that user u clicks item i
when shown it is ``sigmoid(bias_i + affinity · <taste_u, trait_i>)``, the ground truth the
simulated users click by. From a log of past impressions drawn from it the demo trains:

- **control**, a popularity baseline: the same top-k items for everyone, by past CTR;
- **candidate**, a personalised model: a low-rank factorisation (truncated SVD) of the
  past click matrix, blended with popularity;
- **explore**, the second experiment's candidate: k items drawn at random for each user
  (a ranker that shows users something new), by the ground truth far worse than the
  control (about half its CTR).

`--lift` sets how much better the candidate's *ground-truth* click-through rate is than the
control's: the blend weight is solved by bisection so that the expected CTR over all users,
computed exactly from the ground truth, is ``(1 + lift)`` times the control's. ``lift = 0``
serves the popularity ranking in both arms (the same model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

TOP_K = 10
#: The rankings the world's models serve.
Model = Literal["control", "candidate", "explore"]


@dataclass(frozen=True)
class World:
    users: int
    items: int
    #: Ground truth: P(click | user u shown item i), users x items.
    truth: np.ndarray
    #: Top-k item indices per user, for each model: users x k.
    control: np.ndarray
    candidate: np.ndarray
    explore: np.ndarray

    def _table(self, model: Model) -> np.ndarray:
        return {"control": self.control, "candidate": self.candidate, "explore": self.explore}[model]

    def recommend(self, model: Model, user: int) -> list[int]:
        return [int(i) for i in self._table(model)[user % self.users]]

    def expected_ctr(self, model: Model) -> float:
        """The model's true click-through rate per impression, averaged over all users."""
        return float(np.take_along_axis(self.truth, self._table(model), axis=1).mean())

    @property
    def true_lift(self) -> float:
        return self.expected_ctr("candidate") / self.expected_ctr("control") - 1


def build(*, users: int, items: int = 300, lift: float, seed: int, rank: int = 8, k: int = TOP_K) -> World:
    """Draw a world, log past impressions, train both models, and calibrate the candidate."""
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=(users, rank))
    trait = rng.normal(size=(items, rank)) / np.sqrt(rank)
    bias = rng.normal(-3.0, 0.4, size=items)
    truth = 1 / (1 + np.exp(-(bias[None, :] + 1.5 * taste @ trait.T)))
    # A log of past traffic: 40 random impressions per user, clicked by the ground truth.
    shown = rng.random((users, items)) < 40 / items
    clicks = (rng.random((users, items)) < truth) & shown
    popularity = (clicks.sum(0) + 1) / (shown.sum(0) + 20)
    control = np.tile(np.argsort(-popularity)[:k], (users, 1))
    # Personalised scores: a rank-r reconstruction of the log's clicks above each item's
    # popularity, over the impressions that happened (unshown pairs are zero: no evidence).
    residual = np.where(shown, clicks - popularity[None, :], 0.0)
    u, s, vt = np.linalg.svd(residual, full_matrices=False)
    personal = (u[:, :rank] * s[:rank]) @ vt[:rank]
    personal /= personal.std() or 1.0
    base = np.log(popularity)
    base = (base - base.mean()) / (base.std() or 1.0)

    def ranking(w: float) -> np.ndarray:
        scores = base[None, :] + w * personal
        top = np.argpartition(-scores, k, axis=1)[:, :k]  # the top k, unordered: cheap
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)

    def lift_at(w: float) -> float:
        top = np.argpartition(-(base[None, :] + w * personal), k, axis=1)[:, :k]
        ctr = np.take_along_axis(truth, top, axis=1).mean()
        return float(ctr / np.take_along_axis(truth, control, axis=1).mean() - 1)

    if lift <= 0:
        candidate = control.copy()
    else:
        low, high = 0.0, 8.0
        if lift_at(high) < lift:
            raise ValueError(f"--lift {lift:g} is more than this world allows (at most {lift_at(high):.2f})")
        for _ in range(16):  # to 8/2**16: the lift to about 1e-4
            mid = (low + high) / 2
            low, high = (mid, high) if lift_at(mid) < lift else (low, mid)
        candidate = ranking(high)
    # Drawn last, so that the other models of a seed are the same as before it existed.
    explore = np.argsort(rng.random((users, items)), axis=1)[:, :k]
    return World(users=users, items=items, truth=truth, control=control, candidate=candidate, explore=explore)
