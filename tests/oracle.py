"""Independent brute force for the spectral-edge tests: save θ before every optimizer step, then numpy.

Nothing here uses the callbacks' code: rows are differences of saved snapshots, the decay part is
re-simulated from the saved hyperparameters, and directions come from a dense SVD of the stacked rows.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

EMBED, SEQ, CLASSES = 8, 5, 3



class TinyAttention(pl.LightningModule):
    """Two self-attention layers and a linear head, so the ``attn_weights`` preset picks 4 matrices."""

    def __init__(self, optim: dict, manual_steps: int = 0) -> None:
        super().__init__()
        self.attn_b = nn.MultiheadAttention(EMBED, 2, batch_first=True)
        self.attn_a = nn.MultiheadAttention(EMBED, 2, batch_first=True)
        self.head = nn.Linear(EMBED, CLASSES)
        self.optim = optim
        self.manual_steps = manual_steps
        self.automatic_optimization = manual_steps == 0
        self.double()  # float64 from the start, so a checkpoint restores bit-exactly

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attn_a(x, x, x, need_weights=False)[0]
        h = h + self.attn_b(h, h, h, need_weights=False)[0]
        return self.head(torch.tanh(h).mean(1))

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> Optional[torch.Tensor]:
        if self.automatic_optimization:
            return self.loss(batch)
        opt = self.optimizers()
        x, y = batch
        for part in range(self.manual_steps):  # several optimizer steps per batch
            opt.zero_grad()
            self.manual_backward(self.loss((x[part::self.manual_steps], y[part::self.manual_steps])))
            opt.step()
        return None

    def configure_optimizers(self) -> Any:
        o = self.optim
        attn_a = [p for n, p in self.named_parameters() if n.startswith("attn_a")]
        rest = [p for n, p in self.named_parameters() if not n.startswith("attn_a")]
        groups = [{"params": attn_a, **o.get("group_a", {})}, {"params": rest}] if "group_a" in o else self.parameters()
        opt = o["cls"](groups, **o["kwargs"])
        if "step_lr" in o:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o["step_lr"], gamma=0.5)
        elif "cosine_lr" in o:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o["cosine_lr"])
        else:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def make_loader(n: int, batch_size: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, SEQ, EMBED, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call, merged per step."""

    def __init__(self) -> None:
        super().__init__()
        self.by_step: dict[int, dict[str, float]] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        self.by_step.setdefault(step, {}).update(metrics)


class Snapshots(Callback):
    """θ, gradients (zero where none: see ``stepped``) and each parameter's optimizer hyperparameters just
    before every optimizer step."""

    def __init__(self) -> None:
        self.thetas: list[dict[str, np.ndarray]] = []
        self.grads: list[dict[str, np.ndarray]] = []
        self.stepped: list[dict[str, bool]] = []  # had a gradient, so the optimizer touched it
        self.hyper: list[dict[str, dict]] = []
        self.final: dict[str, np.ndarray] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        named = dict(pl_module.named_parameters())
        self.thetas.append({n: p.detach().double().numpy().copy() for n, p in named.items()})
        self.grads.append(
            {n: np.zeros(p.shape) if p.grad is None else p.grad.detach().double().numpy().copy() for n, p in named.items()}
        )
        self.stepped.append({n: p.grad is not None for n, p in named.items()})
        by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self.hyper.append({n: {k: v for k, v in by_id[id(p)].items() if k != "params"} for n, p in named.items()})

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.final = {n: p.detach().double().numpy().copy() for n, p in pl_module.named_parameters()}


def attention_names(names: list[str]) -> list[str]:
    return sorted(n for n in names if n.endswith("in_proj_weight") or n.endswith("out_proj.weight"))


def flat(snapshot: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([snapshot[n].ravel() for n in names])


def decay_per_step(snaps: Snapshots, names: list[str], optimizer: str) -> np.ndarray:
    """[N, P] decay part of every step: AdamW −η ω θ; SGD through its own momentum buffer; 0 without a gradient."""
    out, buffers = [], {}
    for theta, hyper, stepped in zip(snaps.thetas, snaps.hyper, snaps.stepped):
        parts = []
        for n in names:
            h, th = hyper[n], theta[n].ravel()
            if not stepped[n]:  # torch optimizers skip parameters without a gradient
                parts.append(np.zeros_like(th))
                continue
            if optimizer == "adamw" or h.get("momentum", 0) == 0:
                parts.append(-h["lr"] * h["weight_decay"] * th)
                continue
            d = h["weight_decay"] * th
            buffers[n] = d.copy() if n not in buffers else h["momentum"] * buffers[n] + (1 - h["dampening"]) * d
            step = d + h["momentum"] * buffers[n] if h["nesterov"] else buffers[n]
            parts.append(-h["lr"] * step)
        out.append(np.concatenate(parts))
    return np.stack(out)


def clipped_grads(snaps: Snapshots, names: list[str], max_norm: Optional[float]) -> np.ndarray:
    """[N, P] gradients of ``names`` as the optimizer saw them, after global-norm clipping over all params."""
    out = []
    for grads in snaps.grads:
        total = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
        scale = 1.0 if max_norm is None else min(1.0, max_norm / (total + 1e-6))
        out.append(flat(grads, names) * scale)
    return np.stack(out)


def rows_of(per_step: np.ndarray, interval: int) -> np.ndarray:
    n = per_step.shape[0] // interval
    return per_step[: n * interval].reshape(n, interval, -1).sum(1)


def brute_metrics(thetas: np.ndarray, decay: np.ndarray, interval: int, window: int, top_k: int) -> dict[int, dict]:
    """Every row's logged scalars by step. thetas [N+1, P] (θ_0..θ_N), decay [N, P]."""
    total = rows_of(np.diff(thetas, axis=0), interval)
    wd = rows_of(decay, interval)
    out, prev_v = {}, None
    for r in range(total.shape[0]):
        step = (r + 1) * interval
        theta = thetas[step]
        m = {
            "update/norm_total": np.linalg.norm(total[r]),
            "update/norm_wd": np.linalg.norm(wd[r]),
            "update/norm_grad": np.linalg.norm(total[r] - wd[r]),
            "update/theta_norm": np.linalg.norm(theta),
        }
        lo = max(0, r - window + 1)
        x, x_wd = total[lo : r + 1], wd[lo : r + 1]
        if x.shape[0] < 2:
            out[step] = m
            continue
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        vt = vt * np.where((x @ vt.T).sum(0) < 0, -1.0, 1.0)[:, None]
        w = len(s)
        for k in range(min(top_k, w)):
            m[f"edge/sigma_{k + 1}"] = s[k]
        ratio = lambda a, b: a / b if b >= 1e-12 else 1e6  # noqa: E731
        for k in range(min(top_k, w - 1)):
            m[f"edge/sigma_ratio_{k + 1}"] = ratio(s[k], s[k + 1])
        m["edge/g23"] = s[1] ** 2 - (s[2] ** 2 if w > 2 else 0.0)
        scores = [(s[j] / s.sum()) * ratio(s[j], s[j + 1]) for j in range(w - 1)]
        k_star = int(np.argmax(scores)) + 1
        m["edge/k_star"], m["edge/gap_ratio"] = float(k_star), ratio(s[k_star - 1], s[k_star])
        n = min(top_k, int((s > 1e-12).sum()))
        v = vt[:n]
        for k in range(n):
            m[f"edge/cos_theta_v{k + 1}"] = abs(theta @ v[k]) / np.linalg.norm(theta)
            g, d = (x - x_wd) @ v[k], x_wd @ v[k]
            m[f"edge/grad_frac_v{k + 1}"] = (g**2).mean() / ((g**2).mean() + (d**2).mean())
            m[f"edge/alignment_v{k + 1}"] = (g * d).mean()
            m[f"edge/grad_mean_v{k + 1}"], m[f"edge/wd_mean_v{k + 1}"] = g.mean(), d.mean()
        if prev_v is not None and len(prev_v) and len(v):
            o = np.abs(prev_v @ v.T)
            rows, cols = linear_sum_assignment(-o)
            matched = dict(zip(rows, cols))  # the old v₁ may lose its partner when fewer modes remain: NaN
            m["edge/rotation_v1_deg"] = math.degrees(math.acos(min(1.0, o[0, matched[0]]))) if 0 in matched else math.nan
            if len(prev_v) >= 2 and len(v) >= 2:
                angles = scipy.linalg.subspace_angles(prev_v[:2].T, v[:2].T)
                m["edge/rotation_span12_deg"] = math.degrees(angles.max())
        prev_v = v
        out[step] = m
    return out


def assert_metrics_close(got: dict[int, dict], want: dict[int, dict], rtol: float = 1e-5, atol: float = 1e-9) -> None:
    assert sorted(got) == sorted(want), f"logged steps {sorted(got)} != expected {sorted(want)}"
    for step in want:
        assert set(got[step]) == set(want[step]), (step, set(got[step]) ^ set(want[step]))
        for name, value in want[step].items():
            tol = 1e-4 if name.endswith("_deg") else atol  # arccos near 1 amplifies round-off
            if math.isnan(value):
                assert math.isnan(got[step][name]), (step, name, got[step][name], value)
                continue
            assert math.isclose(got[step][name], value, rel_tol=rtol, abs_tol=tol), (step, name, got[step][name], value)


ADAMW = {"cls": torch.optim.AdamW, "kwargs": {"lr": 0.02, "weight_decay": 0.5}}


def run_fit(
    root: Any,
    recorder: Callback,
    optim: dict = ADAMW,
    steps: int = 24,
    analyses: tuple = (),
    extra: tuple = (),
    manual_steps: int = 0,
    batches: int = 4,
    seed: int = 0,
    ckpt_path: Optional[str] = None,
    model_cls: type = TinyAttention,
    precision: str = "64-true",
    **trainer_kwargs: Any,
) -> tuple[TinyAttention, Snapshots, MemoryLogger]:
    """Fit ``model_cls`` (float64 unless ``precision`` says otherwise) for ``steps`` optimizer steps."""
    pl.seed_everything(seed, verbose=False)
    trainer_kwargs.setdefault("log_every_n_steps", 1)  # the oracle compares every row's logged scalars
    model = model_cls(optim, manual_steps)
    snaps, logger = Snapshots(), MemoryLogger()
    trainer = pl.Trainer(
        default_root_dir=str(root),
        max_steps=steps,
        precision=precision,
        logger=logger,
        callbacks=[*extra, recorder, *analyses, snaps],
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in extra),
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(model, make_loader(8 * batches, 8), ckpt_path=ckpt_path)
    return model, snaps, logger


def brute_for_run(
    model: TinyAttention, snaps: Snapshots, optimizer: str, interval: int, window: int, top_k: int,
    names: Optional[list[str]] = None,
) -> dict:
    """The brute force of a ``run_fit`` run, over the attention matrices (the default selection) or ``names``."""
    names = names or attention_names([n for n, _ in model.named_parameters()])
    thetas = np.stack([flat(t, names) for t in snaps.thetas] + [flat(snaps.final, names)])
    return brute_metrics(thetas, decay_per_step(snaps, names, optimizer), interval, window, top_k)
