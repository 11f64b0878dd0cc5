"""jobs.evaluate: ROC AUC against a brute-force reference."""
from __future__ import annotations

import numpy as np
import pytest

from batchscore.jobs.evaluate import roc_auc

# --- evaluation ---


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_brute_force_pairwise_auc(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.3).astype(int)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # coarse: many ties
    assert roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


def test_roc_auc_edges() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.array([1, 1]), np.array([0.2, 0.3]))
