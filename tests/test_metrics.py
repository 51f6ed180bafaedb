"""Exact AUC and logloss against brute-force definitions."""
import numpy as np

from ctrkit.metrics import auc, logloss


def brute_force_auc(labels, scores):
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500).astype(np.float32)
    scores = np.round(rng.random(500), 2)  # many ties
    assert abs(auc(labels, scores) - brute_force_auc(labels, scores)) < 1e-12


def test_auc_edge_cases():
    assert auc(np.array([0, 1]), np.array([0.1, 0.9])) == 1.0
    assert auc(np.array([1, 0]), np.array([0.1, 0.9])) == 0.0
    assert np.isnan(auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_logloss():
    labels = np.array([1, 0, 1, 0], dtype=np.float32)
    probs = np.array([0.9, 0.2, 0.6, 0.4])
    expected = -np.mean(np.log([0.9, 0.8, 0.6, 0.6]))
    assert abs(logloss(labels, probs) - expected) < 1e-12
    assert np.isfinite(logloss(np.array([1.0]), np.array([0.0])))
