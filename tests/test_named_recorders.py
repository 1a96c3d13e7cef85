"""Two named UpdateRecorders in one trainer: a GAN under manual optimization, generator and discriminator each
with its own optimizer. Each recorder's scalars equal the brute force of its own optimizer's steps, labelled by
that optimizer's step count, and a run resumed mid-window logs what the uninterrupted run logs.
"""
from typing import Any, Optional

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import EdgeDecomposer, GramSpectrum, UpdateRecorder
from callbacks.utils.errors import ConfigurationError
from oracle import MemoryLogger, Snapshots, assert_metrics_close, brute_metrics, decay_per_step, flat

INTERVAL, WINDOW, TOP_K = 2, 3, 3
STEPS, STOP = 16, 7  # optimizer steps of each optimizer; the first run stops 1 step into row 4
NOISE, HIDDEN, SAMPLE = 3, 6, 4


class TinyGAN(pl.LightningModule):
    """Generator step, then discriminator step, on every batch (float64, manual optimization)."""

    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(NOISE, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, SAMPLE))
        self.discriminator = nn.Sequential(nn.Linear(SAMPLE, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1))
        self.automatic_optimization = False
        self.double()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real, z = batch
        opt_g, opt_d = self.optimizers()
        fake = self.generator(z)
        opt_g.zero_grad()
        self.manual_backward(F.softplus(-self.discriminator(fake)).mean())
        opt_g.step()
        opt_d.zero_grad()
        loss_d = F.softplus(-self.discriminator(real)).mean() + F.softplus(self.discriminator(fake.detach())).mean()
        self.manual_backward(loss_d)
        opt_d.step()

    def configure_optimizers(self) -> Any:
        return (
            torch.optim.AdamW(self.generator.parameters(), lr=0.02, weight_decay=0.5),
            torch.optim.SGD(self.discriminator.parameters(), lr=0.1, momentum=0.8, weight_decay=0.2,
                            dampening=0.0, nesterov=False),
        )


class OptimizerSnapshots(Snapshots):
    """oracle.Snapshots restricted to the steps and parameters of ``trainer.optimizers[index]``."""

    def __init__(self, index: int, prefix: str) -> None:
        super().__init__()
        self.index, self.prefix = index, prefix

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if getattr(optimizer, "_optimizer", optimizer) is not trainer.optimizers[self.index]:
            return
        named = {n: p for n, p in pl_module.named_parameters() if n.startswith(self.prefix)}
        self.thetas.append({n: p.detach().numpy().copy() for n, p in named.items()})
        self.stepped.append({n: p.grad is not None for n, p in named.items()})
        by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self.hyper.append({n: {k: v for k, v in by_id[id(p)].items() if k != "params"} for n, p in named.items()})


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, SAMPLE, generator=g, dtype=torch.float64) + 1.0,
                         torch.randn(8, NOISE, generator=g, dtype=torch.float64))
    return DataLoader(data, batch_size=8)  # one batch per epoch: every run sees the same batches


def _fit(root: Any, steps: int, ckpt_path: Optional[str] = None):
    pl.seed_everything(0, verbose=False)
    recorders = [
        UpdateRecorder(params=["generator.*"], interval=INTERVAL, window=WINDOW, name="G"),  # optimizer found from params
        UpdateRecorder(params="all", interval=INTERVAL, window=WINDOW, name="D", optimizer=1),  # bound by index
    ]
    analyses = [cls(top_k=TOP_K, recorder=n) for n in ("G", "D") for cls in (GramSpectrum, EdgeDecomposer)]
    snaps = [OptimizerSnapshots(0, "generator."), OptimizerSnapshots(1, "discriminator.")]
    logger = MemoryLogger()
    trainer = pl.Trainer(
        default_root_dir=str(root), max_steps=2 * steps, precision="64-true", logger=logger, log_every_n_steps=1,
        callbacks=[*recorders, *analyses, *snaps], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = TinyGAN()
    trainer.fit(model, _loader(), ckpt_path=ckpt_path)
    return trainer, model, recorders, snaps, logger


def _own(logger: MemoryLogger, name: str) -> dict[int, dict]:
    """The scalars one recorder's analyses logged, under their unnamed tags (edge/G/sigma_1 -> edge/sigma_1)."""
    out = {}
    for step, metrics in logger.by_step.items():
        mine = {k.replace(f"/{name}/", "/", 1): v for k, v in metrics.items() if k.split("/")[1:2] == [name]}
        if mine:
            out[step] = mine
    return out


def _brute(snaps: OptimizerSnapshots, kind: str) -> dict[int, dict]:
    import numpy as np

    names = sorted(snaps.thetas[0])
    thetas = np.stack([flat(t, names) for t in snaps.thetas] + [flat(snaps.final, names)])
    return brute_metrics(thetas, decay_per_step(snaps, names, kind), INTERVAL, WINDOW, TOP_K)


def test_each_recorder_equals_its_own_optimizer_brute_force_and_survives_a_resume(tmp_path):
    trainer, model, (rec_g, rec_d), (snap_g, snap_d), logger = _fit(tmp_path / "full", STEPS)
    assert trainer.global_step == 2 * STEPS  # Lightning counts both optimizers' steps
    assert rec_g.steps_done == rec_d.steps_done == STEPS
    assert rec_g.selection.names == tuple(sorted(n for n, _ in model.named_parameters() if n.startswith("generator.")))
    assert rec_d.selection.names == tuple(sorted(n for n, _ in model.named_parameters() if n.startswith("discriminator.")))
    want = {"G": _brute(snap_g, "adamw"), "D": _brute(snap_d, "sgd")}
    for name in ("G", "D"):
        got = _own(logger, name)
        assert sorted(got) == list(range(INTERVAL, STEPS + 1, INTERVAL))  # each optimizer's own step count
        assert_metrics_close(got, want[name], rtol=1e-6)
        assert "edge/grad_frac_v1" in got[STEPS] and "update/norm_wd" in got[STEPS]
    assert any(k.startswith("edge/G/") for k in logger.by_step[STEPS]) and "edge/sigma_1" not in logger.by_step[STEPS]

    first = _fit(tmp_path / "first", STOP)[0]
    path = str(tmp_path / "stop.ckpt")
    first.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["callbacks"]
    assert {"UpdateRecorder{'name': 'G'}", "UpdateRecorder{'name': 'D'}", "GramSpectrum{'recorder': 'G'}"} <= set(state)
    resumed = _fit(tmp_path / "resumed", STEPS, ckpt_path=path)[4]
    for name in ("G", "D"):
        later = {s: m for s, m in _own(logger, name).items() if s > STOP}
        assert sorted(_own(resumed, name)) == sorted(later) == [8, 10, 12, 14, 16]
        assert_metrics_close(_own(resumed, name), later, rtol=1e-9)


def test_analyses_without_a_recorder_name_refuse_two_recorders(tmp_path):
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path), max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        callbacks=[UpdateRecorder(name="G", optimizer=0, params="all"), UpdateRecorder(name="D", optimizer=1, params="all"),
                   GramSpectrum(top_k=2)],
    )
    with pytest.raises(ConfigurationError, match=r"2 UpdateRecorders .*\['G', 'D'\].*recorder='G'"):
        trainer.fit(TinyGAN(), _loader())
    with pytest.raises(ConfigurationError, match=r"recorder='X'.*names \['G', 'D'\]"):
        UpdateRecorder.find(trainer, "X")


def test_unnamed_recorder_keeps_its_key_and_tags():
    rec = UpdateRecorder()
    assert rec.state_key == "UpdateRecorder" and rec.tag("edge/sigma_1") == "edge/sigma_1"
    assert GramSpectrum().state_key == "GramSpectrum"
    named = UpdateRecorder(name="mlp")
    assert named.tag("edge/sigma_1") == "edge/mlp/sigma_1" and named.tag("update/norm_total") == "update/mlp/norm_total"
    with pytest.raises(ConfigurationError, match="without '/'"):
        UpdateRecorder(name="a/b")
    with pytest.raises(ConfigurationError, match="index >= 0"):
        UpdateRecorder(optimizer=-1)


# ---------------------------------------------------------------- causal analyses bound by name
def _fit_causal(root, recorders, spectra, causal):
    import tiny_attention_model as tiny

    torch.manual_seed(0)
    logger = tiny.MemoryLogger()
    trainer = pl.Trainer(
        max_steps=8, val_check_interval=4, check_val_every_n_epoch=None, num_sanity_val_steps=0, precision="64-true",
        default_root_dir=str(root), logger=logger, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[*recorders, *spectra, *causal],
    )
    trainer.fit(tiny.TinyAttention())
    return trainer, logger


def test_causal_analyses_follow_their_recorder(tmp_path):
    """An AblationCallback bound to recorder "mats" beside a second recorder gives what it gives alone; its tags
    and JSON carry the name."""
    import json

    from callbacks import AblationCallback

    ablate = dict(steps=[8], sets={"edge": [1, 2]}, n_trials=3)
    alone = AblationCallback(**ablate)
    _, solo_log = _fit_causal(
        tmp_path / "alone", [UpdateRecorder(params="all_matrices", window=4)], [GramSpectrum(top_k=4)], [alone]
    )
    named = AblationCallback(**ablate, recorder="mats")
    recorders = [UpdateRecorder(window=4, name="attn"), UpdateRecorder(params="all_matrices", window=4, name="mats")]
    spectra = [GramSpectrum(top_k=4, recorder="attn"), GramSpectrum(top_k=4, recorder="mats")]
    trainer, log = _fit_causal(tmp_path / "two", recorders, spectra, [named])
    assert named._recorder is recorders[1] and named._spectrum is spectra[1]
    assert named.state_key != alone.state_key
    got = {k: v for _, m in log.logged for k, v in m.items() if k.startswith("ablation/")}
    want = {k: v for _, m in solo_log.logged for k, v in m.items() if k.startswith("ablation/")}
    assert want and got == {k.replace("ablation/", "ablation/mats/", 1): v for k, v in want.items()}
    assert {k for _, m in log.logged for k in m} >= {"update/attn/norm_total", "update/mats/norm_total"}
    assert spectra[0].latest["edge/attn/sigma_1"] != spectra[1].latest["edge/mats/sigma_1"]
    with open(f"{trainer.log_dir or trainer.default_root_dir}/ablation_mats.json") as f:
        assert json.load(f)["results"][0]["step"] == 8


def test_optimizer_index_selects_only_that_optimizers_parameters():
    model = TinyGAN()
    opts = model.configure_optimizers()
    rec = UpdateRecorder(params="all", optimizer=1, name="D")
    rec.attach(model, list(opts))
    assert rec.selection.names == tuple(sorted(n for n, _ in model.named_parameters() if n.startswith("discriminator.")))
    with pytest.raises(ConfigurationError, match="span several optimizers.*optimizer=<index>"):
        UpdateRecorder(params="all").attach(model, list(opts))
    with pytest.raises(ConfigurationError, match="has 2 optimizer.*below 2"):
        UpdateRecorder(params="all", optimizer=2).attach(model, list(opts))
