"""The analyses evaluate each distinct Dyck row once, counted per copy: the same counts, losses, KL and curvature as
evaluating every padded row (the path of a module without ``distinct_batches``)."""
import json
import math

import lightning.pytorch as pl
import pytest
import torch
from reference_paths import dyck_eval_batches

from lit_grok.callbacks import AblationCallback, GramSpectrum, LossDecompositionCallback, PerturbationCallback, UpdateRecorder
from lit_grok.callbacks.functional.ablation import paired_counts
from lit_grok.callbacks.functional.perturbation import exact_curvatures, kl_divergence
from lit_grok.callbacks import ablation_callback as ablation_module, perturbation_callback as perturbation_module
from lit_grok.callbacks import loss_decomposition_callback as decomposition_module
from lit_grok.callbacks.utils.evaluation import EvaluationSet, evaluate, evaluation_set, loss_gradient, perturbed
from lit_grok.data.dyck import DyckDataModule
from lit_grok.models.dyck import DyckTransformer


def test_distinct_rows_give_every_rows_counts_loss_kl_and_curvature():
    torch.manual_seed(3)
    model, dm = DyckTransformer().eval(), DyckDataModule()
    batches = dyck_eval_batches(dm)["val"][:3]  # 1536 rows, of which many repeat
    data = evaluation_set(model, batches)
    assert sum(len(c) for c in data.row_counts) < 1536 and int(sum(c.sum() for c in data.row_counts)) == 1536
    params = [p for name, p in model.named_parameters() if "self_attn" in name and "weight" in name]
    shifted = [p + 0.3 * torch.randn_like(p) for p in params]  # enough to flip some predictions

    plain_base, fast_base = evaluate(model, batches, keep_outputs=True), evaluate(model, data, keep_outputs=True)
    with perturbed(params, shifted):
        plain, fast = evaluate(model, batches, keep_outputs=True), evaluate(model, data, keep_outputs=True)
    for a, b in ((plain_base, fast_base), (plain, fast)):
        assert (a.token_correct, a.token_total, a.seq_correct, a.seq_total) == (b.token_correct, b.token_total, b.seq_correct, b.seq_total)
        assert b.loss == pytest.approx(a.loss, rel=1e-6)
    slow_counts = paired_counts(plain_base.outcomes, plain.outcomes)
    fast_counts = paired_counts(fast_base.outcomes, fast.outcomes, fast_base.outcome_counts)
    assert slow_counts == fast_counts and slow_counts.lost > 0
    kl_slow = kl_divergence(plain_base.log_probs, plain.log_probs)
    assert kl_divergence(fast_base.log_probs, fast.log_probs, fast_base.token_counts) == pytest.approx(kl_slow, rel=1e-6)

    direction = [[torch.randn_like(p) for p in params]]
    slow_hvp = exact_curvatures(model, batches, params, direction, plain_base.token_total)
    fast_hvp = exact_curvatures(model, data.batches, params, direction, fast_base.token_total, data.row_counts)
    assert fast_hvp == pytest.approx(slow_hvp, rel=1e-5)

    slow_grad, fast_grad = loss_gradient(model, batches, params), loss_gradient(model, data, params)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-5, atol=1e-6 * float(slow_grad.abs().max()))


def fit_causal(tmp_path, name: str) -> dict:
    torch.manual_seed(0)
    ablation = AblationCallback(steps=[12], sets={"edge": [1], "bulk": [2]}, n_trials=2, seed=1, max_batches=2,
                                json_path=str(tmp_path / f"{name}_ablation.json"))
    perturbation = PerturbationCallback(steps=[12], directions=[1, 2], n_random=1, max_batches=1, attention_curves=True,
                                        json_path=str(tmp_path / f"{name}_perturbation.json"))
    decomposition = LossDecompositionCallback(steps=[12], n_dirs=3, max_batches=2,
                                              json_path=str(tmp_path / f"{name}_decomposition.json"))
    trainer = pl.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1,
                         callbacks=[UpdateRecorder(interval=4, window=3), GramSpectrum(top_k=3), ablation, perturbation,
                                    decomposition])
    trainer.fit(DyckTransformer(lr=3e-3), DyckDataModule())
    return {kind: json.loads((tmp_path / f"{name}_{kind}.json").read_text())["results"][0]
            for kind in ("ablation", "perturbation", "decomposition")}


def numbers(tree, path=""):
    """{path: leaf} of every number in a JSON tree."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in numbers(sub, f"{path}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in numbers(sub, f"{path}/{i}").items()}
    return {path: tree} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}


def test_analysis_results_equal_the_every_row_path(tmp_path, monkeypatch):
    fast = fit_causal(tmp_path, "fast")
    for module in (ablation_module, perturbation_module, decomposition_module):  # a module without distinct_batches
        monkeypatch.setattr(module, "evaluation_set", lambda pl_module, batches: EvaluationSet(list(batches)))
    monkeypatch.setattr(perturbation_module, "QueryAttentionModule", type("Nothing", (), {}))  # nor the distinct queries
    slow = fit_causal(tmp_path, "slow")
    for kind in slow:
        want, got = numbers(slow[kind]), numbers(fast[kind])
        assert want.keys() == got.keys()
        assert any(not math.isnan(v) for k, v in want.items() if k.endswith("g_val")) or kind != "decomposition"
        assert any(k.endswith("attention_entropy") for k in want) or kind != "perturbation"
        for key, value in want.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got[key]), key
            elif "/ci_sequence" in key:  # float sums over sequences, in another order
                assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-15), key
            elif key.endswith(("lost", "gained", "trials", "accuracy", "delta_acc", "actual_dacc")) or "/ci" in key:
                assert got[key] == value, key  # counts, and what only counts decide, are equal
            elif key.endswith("/fd"):  # (L+ + L- - 2 L0) / eps^2: 1e-6 relative rounding of each loss, over eps^2
                noise = 4e-6 * slow[kind]["base"]["loss"] / slow[kind]["fd_eps"] ** 2
                assert got[key] == pytest.approx(value, abs=noise), key
            elif key.endswith(("g_train", "g_val")):  # a projection of the gradient: its rounding is the whole gradient's
                norm = slow[kind]["grad_norm_" + key.rsplit("_", 1)[1]]
                assert got[key] == pytest.approx(value, abs=1e-6 * norm), key
            elif "delta_loss" in key or "actual_dloss" in key or "/kl" in key or "max_kl" in key:
                assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-6), key  # differences of rounded losses
            else:
                assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key


def test_rows_without_a_label_leave_the_trees_and_the_counts_alone():
    from lit_grok.data.common import IGNORE

    torch.manual_seed(4)
    model, dm = DyckTransformer().eval(), DyckDataModule()
    x, y = (t.clone() for t in dyck_eval_batches(dm)["val"][0][:2])
    y[:9] = IGNORE  # rows the evaluation has nothing to count in
    data = evaluation_set(model, [(x, y)])
    assert int(sum(c.sum() for c in data.row_counts)) == len(x) - 9
    model.task_metric = "seq_acc"  # the sequence outcomes too
    plain, fast = evaluate(model, [(x, y)], keep_outputs=True), evaluate(model, data, keep_outputs=True)
    assert (plain.token_correct, plain.token_total) == (fast.token_correct, fast.token_total)
    assert (plain.seq_correct, plain.seq_total) == (fast.seq_correct, fast.seq_total) and plain.seq_total == len(x) - 9
    assert len(plain.outcomes) == plain.trials and int(plain.outcomes.sum()) == plain.seq_correct
    assert int((fast.outcomes * fast.outcome_counts).sum()) == fast.seq_correct
    assert fast.loss == pytest.approx(plain.loss, rel=1e-6)
