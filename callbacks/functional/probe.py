"""Probes: how well a linear, quadratic or small-MLP read-out recovers a per-token target from hidden states.

Pure functions on arrays. Samples are tokens, but the train/test split is by sequence group (identical
sequences share a group), so neither tokens of one sequence nor duplicated sequences straddle the split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, r2_score
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler
from torch import Tensor

from ..utils.protocols import ProbeTarget

PROBE_KINDS = ("linear", "quadratic", "mlp")


def token_samples(states: Tensor, target: ProbeTarget) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features [n, D], target values [n] and sequence groups [n] of the masked tokens of states [B, T, D]."""
    B, T = target.mask.shape
    if states.shape[:2] != (B, T):
        raise ValueError(f"hidden states of shape {tuple(states.shape)} do not align with a probe target of shape {(B, T)}")
    mask = target.mask.bool().cpu()
    groups = target.groups.cpu()[:, None].expand(B, T)  # [B, T]
    features = states.detach().float().cpu()[mask].numpy()  # [n, D]
    return features.astype(np.float64), target.values.cpu()[mask].numpy(), groups[mask].numpy()


def group_split(groups: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of a seeded split of the unique groups: round(test_fraction * n_groups) go to test."""
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError(f"a probe needs samples from at least 2 sequence groups to split, got {len(unique)}")
    order = np.random.default_rng(seed).permutation(unique)
    n_test = min(max(1, round(test_fraction * len(unique))), len(unique) - 1)
    is_test = np.isin(groups, order[:n_test])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def make_probe(
    kind: str, categorical: bool, seed: int = 0, ridge_alpha: float = 1.0, quadratic_alpha: float = 10.0,
    standardize: bool = True,
) -> BaseEstimator:
    """An sklearn pipeline on standardised features: Ridge / logistic (C = 1/alpha) after identity or
    degree-2 features (squares included), or a 64-unit ReLU MLP (the reference's settings) with early stopping.

    ``standardize=False`` fits on the raw features, as the reference did: a fixed Ridge penalty then weighs
    more as the representation shrinks, so its R² falls with the feature scale, not with what is encoded.

    The MLP's early-stopping validation split (15 %) is drawn by token from the training groups only.
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; choose from {PROBE_KINDS}")
    scaler = [StandardScaler()] if standardize else []
    if kind == "mlp":
        mlp = MLPClassifier if categorical else MLPRegressor
        est = mlp(hidden_layer_sizes=(64,), alpha=0.01, learning_rate_init=1e-3, max_iter=500, early_stopping=True,
                  validation_fraction=0.15, n_iter_no_change=10, tol=1e-4, random_state=seed)
        return make_pipeline(*scaler, est)
    alpha = ridge_alpha if kind == "linear" else quadratic_alpha
    if kind == "quadratic" and not categorical:
        return make_pipeline(*scaler, QuadraticRidge(alpha))
    head = LogisticRegression(C=1.0 / alpha, max_iter=1000) if categorical else Ridge(alpha=alpha)
    if kind == "linear":
        return make_pipeline(*scaler, head)
    return make_pipeline(*scaler, PolynomialFeatures(2, include_bias=False), head)


class QuadraticRidge(RegressorMixin, BaseEstimator):
    """Ridge (with intercept) on degree-2 features without bias, ``PolynomialFeatures(2, include_bias=False)`` then
    ``Ridge(alpha)``, solved in the dual as sklearn does when there are more features than samples, but with the
    features' inner products from the kernel φ(a)·φ(b) = g + (g² + a²·b²) / 2, g = a·b: O(n² D), not O(n² D²).

    With at least as many samples as features it builds them and fits sklearn's Ridge, sklearn's choice too.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def fit(self, X: np.ndarray, y: np.ndarray) -> "QuadraticRidge":
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)  # [n, D], [n]
        n, D = X.shape
        if n >= D + D * (D + 1) // 2:
            self.primal_ = make_pipeline(PolynomialFeatures(2, include_bias=False), Ridge(alpha=self.alpha)).fit(X, y)
            return self
        self.primal_ = None
        K = quadratic_kernel(X, X)  # [n, n]
        self.train_, self.kernel_row_mean_, self.kernel_mean_ = X, K.mean(0), K.mean()
        centred = K - self.kernel_row_mean_[:, None] - self.kernel_row_mean_[None] + self.kernel_mean_  # features centred
        centred.flat[:: n + 1] += self.alpha
        self.y_mean_ = y.mean()
        self.dual_coef_ = linalg.cho_solve(linalg.cho_factor(centred, overwrite_a=True), y - self.y_mean_)  # [n]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)  # [m, D]
        if self.primal_ is not None:
            return self.primal_.predict(X)
        K = quadratic_kernel(X, self.train_)  # [m, n]
        centred = K - K.mean(1, keepdims=True) - self.kernel_row_mean_[None] + self.kernel_mean_
        return centred @ self.dual_coef_ + self.y_mean_


def quadratic_kernel(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """[m, n] inner products of the degree-2 features without bias (x_i, then x_i x_j for i <= j) of A [m, D], B [n, D]."""
    g = A @ B.T
    kernel = (A * A) @ (B * B).T
    kernel += g * g
    kernel /= 2
    kernel += g
    return kernel


@dataclass
class ProbeResult:
    """Held-out score of one probe: R² for regression, accuracy for classification."""

    kind: str
    metric: str  # "r2" or "acc"
    value: float
    n_train: int
    n_test: int


def run_probes(
    features: np.ndarray,
    values: np.ndarray,
    groups: np.ndarray,
    categorical: bool,
    kinds: tuple[str, ...] = PROBE_KINDS,
    test_fraction: float = 0.3,
    seed: int = 0,
    max_tokens: int | None = 4000,
    ridge_alpha: float = 1.0,
    quadratic_alpha: float = 10.0,
    standardize: bool = True,
) -> list[ProbeResult]:
    """Fit each probe kind on one shared group split of (features [n, D], values [n]); score on the held-out groups.

    With more than ``max_tokens`` samples, a seeded uniform subset of tokens is kept first (the split stays by group).
    """
    rng = np.random.default_rng(seed)
    if max_tokens is not None and len(values) > max_tokens:
        keep = np.sort(rng.choice(len(values), max_tokens, replace=False))
        features, values, groups = features[keep], values[keep], groups[keep]
    train, test = group_split(groups, test_fraction, seed)
    y = values.astype(np.int64) if categorical else values.astype(np.float64)
    results = []
    for kind in kinds:
        probe = make_probe(kind, categorical, seed, ridge_alpha, quadratic_alpha, standardize).fit(features[train], y[train])
        pred = probe.predict(features[test])
        score = accuracy_score(y[test], pred) if categorical else r2_score(y[test], pred)
        results.append(ProbeResult(kind, "acc" if categorical else "r2", float(score), len(train), len(test)))
    return results
