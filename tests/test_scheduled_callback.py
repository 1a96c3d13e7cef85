"""ScheduledCallback wiring in real fits: resume checks, grok+0 after the last step, one run per step, state keys."""
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks.ablation_callback import AblationCallback
from callbacks.fourier_attention_callback import FourierAttentionCallback
from callbacks.gram_spectrum import GramSpectrum
from callbacks.grok_detector import GrokDetector
from callbacks.perturbation_callback import PerturbationCallback
from callbacks.probe_callback import ProbeCallback
from callbacks.functional.probe import run_probes, token_samples
from callbacks.update_recorder import UpdateRecorder
from probe_toy_model import RecordingLogger, ToyEncoder

LAYER = "encoder.layers.0"
ANALYSES = {
    "ablation": lambda steps: AblationCallback(steps=steps, sets={"edge": [1]}, n_trials=1, max_batches=1),
    "perturbation": lambda steps: PerturbationCallback(steps=steps, directions=[1], n_random=1, eps=[-0.01, 0.0, 0.01],
                                                       curvature=False, max_batches=1),
    "probe": lambda steps: ProbeCallback([LAYER], "count", probes=["linear"], steps=steps),
    "fourier": lambda steps: FourierAttentionCallback(modules=[LAYER], steps=steps),
}



def fit(tmp_path, callbacks, max_steps, ckpt_path=None, val_every=None):
    """Fit ToyEncoder (4 train batches per epoch) with UpdateRecorder, GramSpectrum and a step-3 ModelCheckpoint."""
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, save_last=True)
    validation = dict(limit_val_batches=0)
    if val_every is not None:
        validation = dict(val_check_interval=val_every, check_val_every_n_epoch=None, limit_val_batches=1)
    trainer = pl.Trainer(
        max_steps=max_steps, callbacks=[UpdateRecorder(window=2), GramSpectrum(top_k=2), *callbacks, checkpoint],
        logger=RecordingLogger(), default_root_dir=tmp_path, num_sanity_val_steps=0, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1, **validation,
    )
    trainer.fit(ToyEncoder(), ckpt_path=ckpt_path)
    return trainer, checkpoint


@pytest.mark.parametrize("name", list(ANALYSES))
def test_resume_past_a_new_schedule_step_fails_in_one_line_before_training(tmp_path, name):
    _, checkpoint = fit(tmp_path, [ANALYSES[name]([5])], max_steps=3)
    with pytest.raises(ValueError, match=r"a schedule step in the past: \['step_2'\] < global_step 3") as err:
        fit(tmp_path, [ANALYSES[name]([2, 5])], max_steps=6, ckpt_path=checkpoint.last_model_path)
    assert "\n" not in str(err.value)


def test_resume_restores_results_and_done_labels_per_state_key(tmp_path):
    """Two ProbeCallbacks in one trainer keep their own state through a checkpoint; nothing runs twice."""
    count, token = (ProbeCallback([LAYER], t, probes=["linear"], steps=s) for t, s in (("count", [2, 5]), ("token", [3])))
    assert count.state_key != token.state_key
    _, checkpoint = fit(tmp_path, [count, token], max_steps=3)
    assert [(r["step"], r["labels"]) for r in count.results] == [(2, ["step_2"])]
    assert [(r["step"], r["labels"]) for r in token.results] == [(3, ["step_3"])]
    count2, token2 = (ProbeCallback([LAYER], t, probes=["linear"], steps=s) for t, s in (("count", [2, 5]), ("token", [3])))
    trainer, _ = fit(tmp_path, [count2, token2], max_steps=6, ckpt_path=checkpoint.last_model_path)
    assert trainer.global_step == 6
    assert count2.results[0] == count.results[0] and [r["step"] for r in count2.results] == [2, 5]
    assert token2.results == token.results and token2.schedule.done == {"step_3"}
    assert count2.schedule.done == {"step_2", "step_5"}
    assert list(trainer.logger.merged("probe/")) == [5]  # the resumed fit measured only step 5


def final_scores(model, target="count", n_seq=40):
    """Held-out linear-probe score of LAYER on the model's current weights, computed without hooks."""
    x, y = model.val_data[0][:n_seq], model.val_data[1][:n_seq]
    model.eval()
    with torch.no_grad():
        h = model.encoder.layers[0](model.embed(x), src_mask=model.causal_mask(x.shape[1]), is_causal=True)
    X, values, groups = token_samples(h, model.probe_targets((x, y))[target])
    return run_probes(X, values, groups, False, ("linear",), seed=0, max_tokens=None)[0].value


def test_grok_found_after_the_last_step_runs_grok0_once_at_train_end(tmp_path):
    probe = ProbeCallback([LAYER], "count", probes=["linear"], after_grok=[0], max_tokens=None)
    trainer, _ = fit(tmp_path, [GrokDetector(threshold=1e-9), probe], max_steps=4, val_every=4)
    assert GrokDetector.find(trainer).grok_step == 4  # seen by the validation after the last step
    assert [(r["step"], r["labels"]) for r in probe.results] == [(4, ["grok+0"])]
    logged = trainer.logger.merged("probe/")
    assert list(logged) == [4]
    assert logged[4][f"probe/{LAYER}/linear_r2"] == pytest.approx(final_scores(trainer.lightning_module), abs=1e-5)


def test_explicit_step_and_grok0_on_one_step_measure_once_with_both_labels(tmp_path):
    probe = ProbeCallback([LAYER, "encoder.layers.1"], "count", probes=["linear"], steps=[2], after_grok=[0, 1])
    trainer, _ = fit(tmp_path, [GrokDetector(threshold=1e-9), probe], max_steps=3, val_every=2)
    assert GrokDetector.find(trainer).grok_step == 2
    assert [(r["module"], r["step"], r["labels"]) for r in probe.results] == [
        (LAYER, 2, ["step_2", "grok+0"]), ("encoder.layers.1", 2, ["step_2", "grok+0"]),
        (LAYER, 3, ["grok+1"]), ("encoder.layers.1", 3, ["grok+1"])]
    calls = [step for step, metrics in trainer.logger.calls if any(k.startswith("probe/") for k in metrics)]
    assert calls == [2, 3]  # one measurement (one logging call) per step
    assert probe.schedule.done == {"step_2", "grok+0", "grok+1"}


def test_missing_grok_detector_fails_at_setup(tmp_path):
    probe = ProbeCallback([LAYER], "count", probes=["linear"], after_grok=[0])
    seen = []
    probe.on_fit_start = lambda *args: seen.append("on_fit_start")  # the setup check comes before it
    with pytest.raises(ValueError, match="no GrokDetector in trainer.callbacks"):
        fit(tmp_path, [probe], max_steps=2)
    assert seen == []
