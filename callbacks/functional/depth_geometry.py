"""Geometry of hidden states grouped by a per-token target (docs/methods.md §8.1): how the levels of the target
(e.g. Dyck depth) sit in representation space.

Pure functions on arrays. Samples are tokens: features [n, D], target values [n], sequence groups [n].
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .probe import group_split


def level_centroids(features: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(levels [L] ascending, centroids [L, D], counts [L]): the mean feature of the tokens of each level present."""
    levels, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.zeros((len(levels), features.shape[1]))
    np.add.at(sums, inverse, features)  # [L, D]
    return levels, sums / counts[:, None], counts


def centroid_pca_shares(centroids: np.ndarray) -> np.ndarray:
    """Explained-variance shares [min(L, D)] of the PCA of the centroid matrix [L, D]: each level weighs the same,
    centred on the mean centroid; NaN when the centroids coincide."""
    centred = centroids - centroids.mean(0)
    power = np.linalg.svd(centred, compute_uv=False) ** 2  # [min(L, D)]
    total = power.sum()
    return power / total if total > 0 else np.full_like(power, math.nan)


def consecutive_distances(centroids: np.ndarray) -> np.ndarray:
    """‖c_{i+1} − c_i‖ [L − 1] between the centroids of consecutive levels present (in ascending order)."""
    return np.linalg.norm(np.diff(centroids, axis=0), axis=1)


def within_level_spread(features: np.ndarray, values: np.ndarray) -> float:
    """RMS distance of each token to its own level's centroid: the scale the centroid distances compare with."""
    levels, centroids, _ = level_centroids(features, values)
    own = centroids[np.searchsorted(levels, values)]  # [n, D]
    return float(np.sqrt(((features - own) ** 2).sum(1).mean()))


def ridge_r2(features: np.ndarray, values: np.ndarray, fit: np.ndarray, score: np.ndarray, alpha: float,
             standardize: bool) -> float:
    """R² on tokens ``score`` of a Ridge (intercept, penalty ``alpha``) fit on tokens ``fit``."""
    model = make_pipeline(*([StandardScaler()] if standardize else []), Ridge(alpha=alpha))
    model.fit(features[fit], values[fit])
    return float(r2_score(values[score], model.predict(features[score])))


def depth_geometry(
    features: np.ndarray, values: np.ndarray, groups: np.ndarray, ridge_alpha: float = 1.0, standardize: bool = False,
    test_fraction: float = 0.3, seed: int = 0,
) -> dict:
    """Centroid geometry and linear decodability of the target from features [n, D] (docs/methods.md §8.1).

    * ``r2_in_sample``: Ridge(alpha) fit and scored on every token (ref ``dyck_depth_basis.py``).
    * ``r2_heldout``: the same Ridge fit on the train sequence groups, scored on the held-out groups.
    * ``pca1_share``: first explained-variance share of the PCA of the level centroids.
    * ``mean_distance``: mean ‖c_{d+1} − c_d‖ over consecutive levels present; ``distance_over_spread``: that
      over the within-level RMS spread (scale-free).
    Needs at least 2 levels; ``r2_heldout`` is NaN when the groups cannot be split.
    """
    if len(values) != len(features) or len(groups) != len(features):
        raise ValueError(f"features [{len(features)}, D], values [{len(values)}] and groups [{len(groups)}] must align")
    values = values.astype(np.float64)
    levels, centroids, counts = level_centroids(features, values)
    if len(levels) < 2:
        raise ValueError(f"depth geometry needs tokens of at least 2 target levels, got {len(levels)}")
    everything = np.arange(len(values))
    heldout = math.nan  # a single sequence group: nothing to hold out
    if len(np.unique(groups)) >= 2:
        train, test = group_split(groups, test_fraction, seed)
        heldout = ridge_r2(features, values, train, test, ridge_alpha, standardize)
    shares = centroid_pca_shares(centroids)
    distances = consecutive_distances(centroids)
    spread = within_level_spread(features, values)
    return {
        "r2_in_sample": ridge_r2(features, values, everything, everything, ridge_alpha, standardize),
        "r2_heldout": heldout,
        "pca1_share": float(shares[0]),
        "pca_shares": [float(s) for s in shares[:5]],
        "mean_distance": float(distances.mean()),
        "distances": [float(d) for d in distances],
        "within_spread": spread,
        "distance_over_spread": float(distances.mean()) / spread if spread > 0 else math.nan,
        "levels": [float(v) for v in levels],
        "counts": [int(c) for c in counts],
        "n_tokens": int(len(values)),
    }
