"""The population figures of ``lit-grok report`` (PNG in the out folder, and TensorBoard images in OUT/report_figures).

Seeds are drawn as a band (min–max over the seeds of a group) around their mean, or as error bars (± std,
ddof 1); grok steps are marked per run. Percentages are drawn in percent.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

import numpy as np

from lit_grok.paper_values import paper_value
from lit_grok.population import FIGURE_EVENTS, Group, natural_key, run_phase_steps
from lit_grok.report import value_at
from lit_grok.stats import finite

LEGEND = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
PHASES = ("early", "pre", "at", "post", "late")


def colors(groups: list[Group]) -> dict[str, str]:
    return {g.label: f"C{i % 10}" for i, g in enumerate(groups)}


def common_series(group: Group, tag: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(steps [n] logged by every run of the group, values [runs, n]); empty when a run lacks the tag."""
    series = [group_run.scalars[tag] for group_run in group.runs if tag in group_run.scalars]
    if len(series) != len(group.runs) or not series:
        return np.zeros(0), np.zeros((0, 0))
    steps = series[0][0]
    for s, _ in series[1:]:
        steps = np.intersect1d(steps, s)
    values = np.array([[v[np.nonzero(s == t)[0][-1]] for t in steps] for s, v in series]) * scale
    return steps, values


def band(ax, steps, values, color, label) -> None:
    with np.errstate(all="ignore"):
        ax.plot(steps, np.nanmean(values, axis=0), color=color, lw=1.4, label=f"{label} (mean, band min–max)")
        ax.fill_between(steps, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=color, alpha=0.2, lw=0)


def mark_grok(ax, group: Group, color: str, first: bool) -> None:
    for i, run in enumerate(r for r in group.runs if math.isfinite(r.grok)):
        ax.axvline(run.grok, color=color, ls=":", lw=0.9, label=f"{group.label}: grok steps" if i == 0 and first else None)


def fig_weight_decay(plt, groups, palette):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    paper_drawn = {axes[0]: False, axes[1]: False}
    for g in groups:
        wd = g.runs[0].weight_decay
        acc = finite([value_at(r.scalars, "val/acc", int(r.last_step)) * 100 for r in g.runs])
        norm = finite([value_at(r.scalars, "weights/norm_all", int(r.last_step)) for r in g.runs])
        for ax, x, tag, scale in ((axes[0], acc, "val/acc", 100.0), (axes[1], norm, "weights/norm_all", 1.0)):
            if x.size:
                ax.errorbar(wd, x.mean(), yerr=x.std(ddof=1) if x.size > 1 else 0, fmt="o", color=palette[g.label],
                            capsize=3, label=f"{g.label} (n={x.size}, ± std)")
            paper = paper_value(tag, "final", g.task, g.regime)
            if paper is not None:
                ax.plot(wd, paper.value * scale, "kx", ms=7, label="paper" if not paper_drawn[ax] else None)
                paper_drawn[ax] = True
    axes[0].set(xlabel="weight decay ω at the end of training", ylabel="test accuracy at the last step (%)",
                title="1A: final accuracy vs weight decay")
    axes[1].set(xlabel="weight decay ω at the end of training", ylabel="‖θ‖₂, all parameters",
                title="1A: final parameter norm vs weight decay")
    axes[1].legend(**LEGEND)
    return fig


def fig_grad_share(plt, groups, palette):
    fig, ax = plt.subplots(figsize=(10, 4))
    for g in groups:
        steps, values = common_series(g, "edge/grad_frac_v1", 100.0)
        if steps.size:
            band(ax, steps, values, palette[g.label], g.label)
        mark_grok(ax, g, palette[g.label], True)
    ax.axhline(50, color="k", lw=0.8, ls="--", label="flip threshold 50 %")
    ax.set(xlabel="optimizer step (window end)", ylabel="gradient share of v₁ (grad%, %)", ylim=(-2, 102),
           title="1B: v₁ grad% over training (dotted: each run's grok step, first test acc ≥ threshold)")
    ax.legend(**LEGEND)
    return fig


def fig_sigma(plt, groups, palette):
    fig, ax = plt.subplots(figsize=(10, 4))
    styles = {1: "-", 2: "--", 3: ":"}
    for g in groups:
        for k, ls in styles.items():
            steps, values = common_series(g, f"edge/sigma_{k}")
            if steps.size:
                with np.errstate(all="ignore"):
                    ax.plot(steps, np.nanmean(values, 0), color=palette[g.label], ls=ls, lw=1.2, label=f"{g.label}: σ_{k}")
                    ax.fill_between(steps, np.nanmin(values, 0), np.nanmax(values, 0), color=palette[g.label], alpha=0.12, lw=0)
    ax.set_yscale("log")
    ax.set(xlabel="optimizer step (window end)", ylabel="σ_k of the update window (parameter units)",
           title="σ_k over training (mean over seeds, band min–max)")
    ax.legend(**LEGEND)
    return fig


def phase_values(group: Group, tag: str, family: str, phase: str, mode: str, memo_at) -> np.ndarray:
    out = []
    for run in group.runs:
        measured = run.scalars[tag][0] if tag in run.scalars else np.zeros(0)
        step = run_phase_steps(run, family, measured, mode, memo_at).get(phase, math.nan)
        out.append(value_at(run.scalars, tag, int(step)) if math.isfinite(step) else math.nan)
    return finite(out)


def fig_curvature(plt, groups, palette, tags, mode, memo_at):
    """vᵀHv per direction, one panel per phase with a measurement (pre, late); None when there is none."""
    names = sorted({t.split("/")[1] for t in tags if re.fullmatch(r"curvature/v\d+/hvp", t)}, key=natural_key)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True, layout="constrained")
    width = 0.8 / max(len(groups), 1)
    drawn = False
    for ax, phase in zip(axes, ("pre", "late")):
        for i, g in enumerate(groups):
            for j, name in enumerate(names + ["random"]):
                tag = f"curvature/{name}/hvp" if name != "random" else "curvature/random/hvp_mean"
                x = phase_values(g, tag, "causal", phase, mode, memo_at)
                if x.size:
                    drawn = True
                    ax.bar(j + i * width, x.mean(), width, yerr=x.std(ddof=1) if x.size > 1 else 0,
                           color=palette[g.label], capsize=2, label=f"{g.label} (n={x.size}, ± std)" if j == 0 else None)
        ax.set_xticks(np.arange(len(names) + 1) + 0.4 - width / 2, names + ["random (mean)"])
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set(title=f"1C: vᵀHv per direction, {phase} phase", ylabel="vᵀHv (exact; loss per unit² of θ)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.0, 0.9), fontsize=8,
               frameon=False)
    return fig if drawn else None


def fig_perturbation(plt, groups, palette, mode, memo_at):
    names = ["v1", "v2", "v3", "v4", "random0"]
    fig, axes = plt.subplots(1, len(names), figsize=(14, 3.4), sharey=True, layout="constrained")
    drawn = False
    for g in groups:
        curves = {n: [] for n in names}
        for run in g.runs:
            payload = run.results.get("perturbation")
            if not payload:
                continue
            measured = np.array([r["step"] for r in payload["results"]], dtype=float)
            step = run_phase_steps(run, "causal", np.sort(measured), mode, memo_at).get("late", math.nan)
            record = next((r for r in payload["results"] if r["step"] == step), None)
            for n in names:
                entry = (record or {}).get("directions", {}).get(n, {})
                if entry.get("curve"):
                    eps = np.array([c["eps"] for c in entry["curve"]])
                    loss = np.array([np.nan if c["loss"] is None else c["loss"] for c in entry["curve"]])
                    curves[n].append((eps, loss - loss[np.argmin(np.abs(eps))]))
        for ax, n in zip(axes, names):
            if curves[n]:
                drawn = True
                eps = curves[n][0][0]
                values = np.array([c[1] for c in curves[n] if c[0].shape == eps.shape])
                band(ax, eps, values, palette[g.label], g.label)
    for ax, n in zip(axes, names):
        ax.set(title=n, xlabel="ε (parameter units)")
    axes[0].set_ylabel("loss(θ + ε d) − loss(θ)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.0, 0.9), fontsize=8, frameon=False)
    fig.suptitle("perturbation curves at the late phase (mean over seeds, band min–max)", fontsize=10)
    return fig if drawn else None


def fig_probes(plt, groups, palette, tags):
    probe_tags = [t for t in tags if t.startswith("probe/")]
    cols = min(len(probe_tags), 4)
    rows = math.ceil(len(probe_tags) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False, sharex=True,
                             layout="constrained")
    for ax, tag in zip(axes.flat, probe_tags):
        for g in groups:
            for i, run in enumerate(g.runs):
                if tag in run.scalars:
                    ax.plot(*run.scalars[tag], marker="o", ms=3, lw=0.8, color=palette[g.label],
                            label=f"{g.label} (one line per seed)" if i == 0 else None)
            mark_grok(ax, g, palette[g.label], True)
        ax.set(title=tag.removeprefix("probe/"), xlabel="optimizer step", ylabel="held-out R²")
    for ax in list(axes.flat)[len(probe_tags):]:
        ax.set_visible(False)
    axes.flat[cols - 1].legend(**LEGEND)
    fig.suptitle("probe R² over training", fontsize=10)
    return fig


def fig_ablation(plt, groups, palette, tags, mode, memo_at):
    names = sorted({t.split("/")[1] for t in tags if re.fullmatch(r"ablation/[^/]+/delta_acc", t)}, key=natural_key)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False, sharey=True,
                             layout="constrained")
    width = 0.8 / max(len(names), 1)
    for ax, g in zip(axes[0], groups):
        for j, name in enumerate(names):
            means, errs = [], []
            for phase in PHASES:
                x = phase_values(g, f"ablation/{name}/delta_acc", "causal", phase, mode, memo_at) * 100
                means.append(x.mean() if x.size else np.nan)
                errs.append(x.std(ddof=1) if x.size > 1 else 0)
            ax.bar(np.arange(len(PHASES)) + j * width, means, width, yerr=errs, capsize=2, color=f"C{j}", label=name)
        ax.set_xticks(np.arange(len(PHASES)) + 0.4 - width / 2, PHASES)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(title=g.label, xlabel="phase", ylabel="Δ test accuracy (percentage points)")
    axes[0][-1].legend(**LEGEND)
    fig.suptitle("ablation: edge sets vs each control (mean over seeds, ± std)", fontsize=10)
    return fig


def draw_all(groups: list[Group], out: Path, mode: str, memo_at: Optional[float]) -> list[Path]:
    """Draw every figure the runs have data for; return the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    palette = colors(groups)
    tags = sorted({t for g in groups for r in g.runs for t in r.scalars}, key=natural_key)
    figures = []
    if len({g.runs[0].weight_decay for g in groups}) > 1 and "val/acc" in tags:
        figures.append(("fig1a_weight_decay", fig_weight_decay(plt, groups, palette)))
    if "edge/grad_frac_v1" in tags:
        figures.append(("fig1b_grad_share_v1", fig_grad_share(plt, groups, palette)))
    if "edge/sigma_1" in tags:
        figures.append(("sigma_k", fig_sigma(plt, groups, palette)))
    if any(re.fullmatch(r"curvature/v\d+/hvp", t) for t in tags):
        figures.append(("fig1c_curvature", fig_curvature(plt, groups, palette, tags, mode, memo_at)))
    figures.append(("perturbation_curves", fig_perturbation(plt, groups, palette, mode, memo_at)))
    if any(t.startswith("probe/") for t in tags):
        figures.append(("probes_r2", fig_probes(plt, groups, palette, tags)))
    if any(re.fullmatch(r"ablation/[^/]+/delta_acc", t) for t in tags):
        figures.append(("ablation", fig_ablation(plt, groups, palette, tags, mode, memo_at)))
    paths = []
    writer = SummaryWriter(log_dir=str(out / FIGURE_EVENTS))
    for name, fig in figures:
        if fig is None:
            continue
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        writer.add_figure(f"report/{name}", fig, global_step=0, close=True)
        paths.append(path)
    writer.close()
    return paths
