"""ComponentEffectCallback on the tiny attention model against a brute force: numpy SVD directions, the decay part
−ηωθ_{s−1} from the saved weights, and a plain re-evaluation of every perturbed model."""
import math

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from callbacks import ConfigurationError
from callbacks.component_effect_callback import ComponentEffectCallback
from callbacks.functional.component_effect import component_rows, unit_step
from tiny_attention_model import evaluate_at, fit_tiny, flat, gram_directions

LR, WD = 3e-2, 0.5  # TinyAttention's AdamW


class DecaySpy(Callback):
    """The recorder's decay rows after every step."""

    def __init__(self):
        self.wd = {}

    def on_train_batch_end(self, trainer, pl_module, *args):
        from callbacks.update_recorder import UpdateRecorder

        self.wd[trainer.global_step] = UpdateRecorder.find(trainer).window_rows()[1].clone().numpy()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    cb = ComponentEffectCallback(steps=[1, 3, 6], directions=[1, 2], components=["grad", "wd", "total"],
                                 variants=["actual", "unit", "full"])
    decay = DecaySpy()
    trainer, model, spy, logger = fit_tiny([cb, decay], max_steps=6, root=str(tmp_path_factory.mktemp("component")))
    return cb, spy, decay, logger


def test_decay_part_is_minus_lr_wd_theta_before_the_step(fitted):
    _, spy, decay, _ = fitted
    for step in (3, 6):  # interval 1: the newest row is step `step`, its decay part −ηω θ_{step−1}
        before = flat(spy.state[step - 1], spy.names)
        np.testing.assert_allclose(decay.wd[step][-1], -LR * WD * before, rtol=1e-10, atol=1e-15)


def test_every_perturbation_equals_the_brute_force(fitted):
    cb, spy, decay, _ = fitted
    checked = 0
    for r in cb.results[1:]:
        step = r["step"]
        state, names, rows, wd = spy.state[step], spy.names, spy.rows[step], decay.wd[step]
        theta = flat(state, names)
        base_loss, base_acc, _, _ = evaluate_at(state, names, theta)
        parts = {"total": rows[-1], "wd": wd[-1], "grad": rows[-1] - wd[-1]}
        eps = 0.005 * np.linalg.norm(theta)
        assert r["eps"] == pytest.approx(eps, rel=1e-12)
        for k in (1, 2):
            v = gram_directions(rows, [k])[0]
            entry = r["directions"][f"v{k}"]
            assert entry["grad"]["coefficient"] + entry["wd"]["coefficient"] == pytest.approx(entry["total"]["coefficient"])
            for c, x in parts.items():
                coefficient = float(x @ v)
                assert entry[c]["coefficient"] == pytest.approx(coefficient, rel=1e-8, abs=1e-14)
                for variant, step_vec in (("actual", coefficient * v), ("unit", eps * np.sign(coefficient) * v)):
                    got = entry[c][variant]
                    assert got["step_norm"] == pytest.approx(np.linalg.norm(step_vec), rel=1e-8)
                    for suffix, moved in (("", theta + step_vec), ("_undo", theta - step_vec)):
                        loss, acc, _, _ = evaluate_at(state, names, moved)
                        assert got[f"loss{suffix}"] == pytest.approx(loss, rel=1e-9)
                        assert got[f"delta_loss{suffix}"] == pytest.approx(loss - base_loss, rel=1e-6, abs=1e-12)
                        assert got[f"delta_acc{suffix}"] == pytest.approx(acc - base_acc, abs=1e-15)
                        checked += 1
        for c, x in parts.items():  # the whole part, not along one direction
            loss, _, _, _ = evaluate_at(state, names, theta + x)
            assert r["full"][c]["loss"] == pytest.approx(loss, rel=1e-9)
    assert checked == 2 * 2 * 3 * 2 * 2  # 2 runs x 2 directions x 3 parts x 2 variants x apply/undo


def test_actual_size_differs_from_the_reference_probe(fitted):
    """The ±ε probe sees only the sign of each part: its grad and wd effects are equal or mirror images."""
    cb, _, _, _ = fitted
    r = cb.results[-1]["directions"]["v1"]
    unit_g, unit_w = r["grad"]["unit"]["delta_loss"], r["wd"]["unit"]["delta_loss"]
    same_sign = np.sign(r["grad"]["coefficient"]) == np.sign(r["wd"]["coefficient"])
    assert unit_g == (unit_w if same_sign else r["wd"]["unit"]["delta_loss_undo"])
    assert r["grad"]["actual"]["step_norm"] != pytest.approx(r["wd"]["actual"]["step_norm"], rel=1e-3)


def test_one_row_window_is_unavailable_not_zero(fitted):
    cb, _, _, logger = fitted
    first = cb.results[0]  # step 1: one row, no v1
    assert first["window_size"] == 0  # GramSpectrum needs 2 rows
    assert first["directions"]["v1"]["grad"]["actual"]["status"] == "unavailable"
    assert math.isnan(first["directions"]["v1"]["grad"]["actual"]["delta_loss"])
    assert first["full"]["wd"]["status"] == "ok"  # the whole part needs no direction
    logged = {}
    for step, metrics in logger.logged:  # several log calls per step
        logged.setdefault(step, {}).update(metrics)
    assert math.isnan(logged[1]["component/v1/wd/actual/delta_loss"])
    assert "component/v2/grad/unit/delta_acc_undo" in logged[6] and "component/full/wd/delta_loss" in logged[6]


def test_helpers():
    total, wd = torch.arange(6.0).reshape(3, 2), torch.ones(3, 2)
    assert torch.equal(component_rows(total, wd, "last")["grad"], torch.tensor([3.0, 4.0]))
    assert torch.equal(component_rows(total, wd, "window")["wd"], torch.tensor([3.0, 3.0]))
    assert unit_step(1e-13, torch.ones(2), 0.1) is None
    assert torch.equal(unit_step(-2.0, torch.ones(2), 0.1), torch.full((2,), -0.1))


@pytest.mark.parametrize("kwargs, match", [
    ({"components": ["grad", "bias"]}, "components"), ({"variants": []}, "variants"), ({"span": "all"}, "span"),
    ({"eps_scale": 0.0}, "eps_scale"), ({"directions": [0]}, "k >= 1"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        ComponentEffectCallback(steps=[1], **kwargs)
