import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from abrouter.analysis.stats.multiple import holm


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.05, 3), rng.uniform(0, 1, 5), [0.01, 0.01]])
    rng.shuffle(p)
    assert holm(list(p)) == pytest.approx(list(multipletests(p, method="holm")[1]), abs=1e-12)


def test_holm_known_values_and_nan() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.01, math.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.03)
    assert holm([]) == []
