"""AblationCallback's 1-direction control (v₁ alone against random unit directions) against a brute force."""
import math

import numpy as np
import pytest

from callbacks import ConfigurationError
from callbacks.ablation_callback import AblationCallback
from tiny_attention_model import evaluate_at, fit_tiny, flat, gram_directions


@pytest.fixture(scope="module", params=[None, {"edge": [1, 2], "v1": [1]}], ids=["v1_measured_alone", "v1_from_its_set"])
def fitted(tmp_path_factory, request):
    sets = {} if request.param is None else {"sets": request.param}
    cb = AblationCallback(steps=[1, 4], n_trials=3, one_direction_control=True, one_direction_seed=7, **sets)
    trainer, model, spy, logger = fit_tiny([cb], max_steps=4, root=str(tmp_path_factory.mktemp("one_direction")))
    return cb, spy, logger


def test_v1_alone_and_random_unit_directions_equal_the_brute_force(fitted):
    cb, spy, logger = fitted
    r = cb.results[-1]
    state, names, rows = spy.state[4], spy.names, spy.rows[4]
    theta = flat(state, names)
    _, base_acc, _, _ = evaluate_at(state, names, theta)
    v1 = gram_directions(rows, [1])[0]
    ablated = theta - (theta @ v1) * v1
    loss, acc, _, _ = evaluate_at(state, names, ablated)
    one = r["one_direction"]
    assert one["v1"]["removed_norm"] == pytest.approx(abs(theta @ v1), rel=1e-8)
    assert one["v1"]["loss"] == pytest.approx(loss, rel=1e-9) and one["v1"]["delta_acc"] == pytest.approx(acc - base_acc)
    deltas = []
    for t, trial in enumerate(one["random"]["trials"]):
        q, _ = np.linalg.qr(np.random.default_rng(7 + t).standard_normal((theta.size, 1)))
        ablated = theta - q[:, 0] * (q[:, 0] @ theta)
        loss, acc, _, _ = evaluate_at(state, names, ablated)
        assert trial["removed_norm"] == pytest.approx(abs(q[:, 0] @ theta), rel=1e-8)
        assert trial["loss"] == pytest.approx(loss, rel=1e-9)
        deltas.append(acc - base_acc)
    assert one["random"]["delta_acc"] == pytest.approx(np.mean(deltas), abs=1e-15)
    assert one["random"]["seeds"] == [7, 8, 9] and one["random"]["n_trials"] == 3
    assert one["ratio"]["status"] in ("ok", "not_resolvable")
    logged = {k: v for step, m in logger.logged if step == 4 for k, v in m.items()}
    assert logged["ablation/one_direction/v1/delta_acc"] == one["v1"]["delta_acc"]
    assert "ablation/one_direction/ratio" in logged and "ablation/edge/delta_acc" in logged  # the 2-dim sets remain


def test_one_row_window_leaves_v1_unavailable(fitted):
    cb, _, _ = fitted
    first = cb.results[0]["one_direction"]
    assert first["v1"]["status"] == "unavailable" and math.isnan(first["v1"]["delta_acc"])
    assert first["random"]["status"] == "ok" and first["ratio"]["status"] == "unavailable"


def test_off_by_default_and_seed_checked():
    assert AblationCallback(steps=[1]).settings()["one_direction_control"] is False
    with pytest.raises(ConfigurationError, match="one_direction_seed"):
        AblationCallback(steps=[1], one_direction_seed=1.5)
