"""``lit-grok report DIR...`` over populations of runs: runs grouped by configuration, seeds as replicates.

Each run's phases come from its own logs (``lit_grok.phases``); each table row is one entry of ``PHASE_ENTRIES``
(a section, a measurement family and a tag pattern) or ``RUN_ENTRIES`` (a section and a function of the run), so
a new row is one entry. Across the seeds of a group: n, mean, std (ddof 1), 95 % Student-t interval; bootstrap
intervals for medians and ratios (docs/methods.md §12.2). The paper's value stands beside ours where it has one.
"""
from __future__ import annotations

import csv
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import yaml

from lit_grok.callbacks import ConfigurationError
from lit_grok.callbacks.functional.table7 import table7_from_scalars
from lit_grok.callbacks.functional.universality import classify_from_scalars
from lit_grok.paper_values import paper_value
from lit_grok.phases import ALIGNED, PHASE_ORDER, REFERENCE, flip_and_return, grok_crossing, phase_steps
from lit_grok.report import find_runs, read_scalars, value_at
from lit_grok.stats import finite, inside, median_ci, ratio_of_means_ci, summarise

FIGURE_EVENTS = "report_figures"  # the report's own TensorBoard images (OUT/report_figures): never a run
REPLICATE_KEY = "seed_everything"
# Config keys that locate, name or checkpoint a run without changing what it computes.
UNGROUPED_PREFIXES = ("seed_everything", "trainer.logger.", "trainer.enable_progress_bar", "ckpt_path",
                      "callbacks.checkpoints.", "callbacks.last_checkpoint.", "callbacks.interrupt.")
FLIP_TAG = "edge/grad_frac_v1"  # EdgeDecomposer: v₁'s gradient share of the window ending at the step
ROTATION_TAG = "edge/rotation_v1_deg"


# ------------------------------------------------------------------------------------------------ one run
def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return out


def schedule_decay(config: dict[str, Any]) -> tuple[Optional[float], bool]:
    """(the weight decay a WeightDecaySchedule ends with, whether it resets the optimizer); (None, False) without one."""
    prefix = "callbacks.wd_schedule.init_args.milestones."
    milestones = {int(k[len(prefix):]): float(v) for k, v in config.items() if k.startswith(prefix)}
    if not milestones:
        return None, False
    return milestones[max(milestones)], bool(config.get("callbacks.wd_schedule.init_args.reset_optimizer_state"))


@dataclass
class Run:
    """One run folder read back: flattened config.yaml, scalars, the analyses' JSON files and its own phases."""

    path: Path
    config: dict[str, Any]
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]
    results: dict[str, Any]  # JSON file stem (ablation, perturbation, probes_depth, ...) -> its content
    seed: Optional[int]
    task: str
    grok: float  # first evaluation step with the monitored metric ≥ threshold (NaN: never)
    grok_crossing: float  # linear crossing between that evaluation and the one before
    flip: float  # first window with v₁ grad% < 0.5
    flip_return: float  # first later window back ≥ 0.5
    last_step: float

    @property
    def finished(self) -> bool:
        """The sweep marked it done, or its logs reach ``trainer.max_steps``."""
        max_steps = self.config.get("trainer.max_steps")
        return (self.path / "done.json").is_file() or (max_steps not in (None, -1) and self.last_step >= max_steps)

    @property
    def weight_decay(self) -> float:
        """The weight decay the run trains with at its end (a WeightDecaySchedule's last milestone, else the model's)."""
        scheduled, _ = schedule_decay(self.config)
        return scheduled if scheduled is not None else float(self.config.get("model.init_args.weight_decay", math.nan))

    @property
    def regime(self) -> str:
        """``wd→ω′[ reset]`` for a weight-decay intervention, ``memo`` for ω = 0, ``grok`` for ω > 0, else ``unknown``."""
        scheduled, reset = schedule_decay(self.config)
        if scheduled is not None:
            return f"wd→{scheduled}" + (" reset" if reset else "")
        return "memo" if self.weight_decay == 0 else "grok" if self.weight_decay > 0 else "unknown"

    @property
    def grok_step(self) -> Optional[int]:
        return None if math.isnan(self.grok) else int(self.grok)

    @cached_property
    def table7(self) -> dict[str, Any]:
        """Both Table-7 rows of the run (docs/methods.md §4.7; a run that never groks: the reference's control rule)."""
        return table7_from_scalars(self.scalars, self.grok_step)

    @cached_property
    def universality(self) -> dict[str, Any]:
        """The run's class by the written-down criterion (docs/methods.md §11.4); unavailable without grok."""
        return classify_from_scalars(self.scalars, self.grok_step)


def grok_monitor(config: dict[str, Any]) -> tuple[Optional[str], float]:
    """(monitored tag, threshold) of the run's GrokDetector in its config; (None, NaN) without one."""
    for key, value in config.items():
        if key.endswith(".class_path") and str(value).endswith("GrokDetector"):
            base = key[: -len("class_path")]
            return config.get(base + "init_args.monitor", "val/acc"), float(config.get(base + "init_args.threshold", 0.95))
    return None, math.nan


def load_run(path: Path) -> Run:
    config_file = path / "config.yaml"
    config = flatten(yaml.safe_load(config_file.read_text())) if config_file.is_file() else {}
    scalars = read_scalars(path)
    results = {}
    for file in sorted(path.glob("*.json")):
        if file.name != "done.json":
            results[file.stem] = json.loads(file.read_text())
    monitor, threshold = grok_monitor(config)
    grok = crossing = math.nan
    if monitor in scalars:
        steps, values = scalars[monitor]
        grok, crossing = grok_crossing(steps + 1, values, threshold)  # validation is logged at step − 1
    if "grok/step" in scalars:  # the detector's own record: also a grok step restored by a resume from before the logs
        logged = float(scalars["grok/step"][1][0])
        if logged != grok:
            grok, crossing = logged, math.nan
    flip = ret = math.nan
    if FLIP_TAG in scalars:
        flip, ret = flip_and_return(*scalars[FLIP_TAG])
    data_class = str(config.get("data.class_path", ""))
    task = data_class.rsplit(".", 2)[-2] if data_class.count(".") >= 2 else "unknown"
    seed = config.get(REPLICATE_KEY)
    last = max((float(s[-1]) for s, _ in scalars.values() if s.size), default=math.nan)
    if "trainer.max_steps" in config and config["trainer.max_steps"] not in (None, -1):
        last = min(last, float(config["trainer.max_steps"])) if math.isfinite(last) else float(config["trainer.max_steps"])
    return Run(path, config, scalars, results, int(seed) if seed is not None else None, task, grok, crossing, flip, ret,
               last)


# ------------------------------------------------------------------------------------------------ groups
@dataclass
class Group:
    label: str
    runs: list[Run]

    @property
    def task(self) -> str:
        return self.runs[0].task

    @property
    def regime(self) -> str:
        return self.runs[0].regime


def base_name(run: Run) -> str:
    """The logger name without the sweep's ``seed=S`` part (else the sweep's folder name)."""
    name = str(run.config.get("trainer.logger.init_args.name") or run.path.parent.name)
    parts = [p for p in name.split(",") if not p.startswith("seed=")]
    if parts:
        return ",".join(parts)
    save_dir = run.config.get("trainer.logger.init_args.save_dir")
    return Path(save_dir).name if save_dir else run.path.parent.parent.name


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs whose configs agree but for the seed and where they are written form a group; the label is the
    logger name plus the model / data / trainer settings that differ between groups."""
    keyed: dict[tuple, list[Run]] = {}
    for run in runs:
        key = tuple(sorted((k, repr(v)) for k, v in run.config.items() if not k.startswith(UNGROUPED_PREFIXES)))
        keyed.setdefault(key, []).append(run)
    configs = [dict(key) for key in keyed]
    differing = sorted(k for k in set().union(*configs)
                       if k.startswith(("model.", "data.", "trainer.")) and len({d.get(k) for d in configs}) > 1)
    groups = []
    for members in keyed.values():
        hyper = [f"{k.rsplit('.', 1)[-1]}={members[0].config.get(k)}" for k in differing]
        groups.append(Group(" ".join([base_name(members[0]), *hyper]),
                            sorted(members, key=lambda r: (r.seed is None, r.seed or 0, str(r.path)))))
    labels = [g.label for g in groups]
    for g in groups:
        if labels.count(g.label) > 1:  # same name and settings, other callbacks: number them
            g.label += f" #{sum(h.label.startswith(g.label) for h in groups[: groups.index(g)]) + 1}"
    return sorted(groups, key=lambda g: g.label)


# ------------------------------------------------------------------------------------------------ rows
@dataclass(frozen=True)
class PhaseEntry:
    """Rows for every logged tag matching ``pattern``, read at the phases of ``family``."""

    section: str
    family: str  # a family of lit_grok.phases: window, causal, probe
    pattern: str  # regular expression, matched in full
    percent: bool = False
    phases: Optional[tuple[str, ...]] = None  # None: every phase of the family


@dataclass(frozen=True)
class RunEntry:
    """One row of a run-level quantity."""

    section: str
    name: str
    extract: Callable[[Run], float]


def mean_rotation(run: Run) -> float:
    """Mean angle of v₁ between consecutive windows over the whole run (the paper's rotation, spec 12 row 14)."""
    x = finite(run.scalars[ROTATION_TAG][1]) if ROTATION_TAG in run.scalars else np.zeros(0)
    return float(x.mean()) if x.size else math.nan


def table7_value(variant: str, key: str) -> Callable[[Run], float]:
    """A number of the run's Table-7 row."""
    def extract(run: Run) -> float:
        value = run.table7[variant].get(key) if run.table7["status"] == "ok" else None
        return math.nan if value is None else float(value)
    return extract


def universality_mean(name: str) -> Callable[[Run], float]:
    def extract(run: Run) -> float:
        found = run.universality
        return float(found["statistics"][name]["mean"]) if found["status"] == "ok" else math.nan
    return extract


RUN_ENTRIES: list[RunEntry] = [
    RunEntry("Grok and flip", "grok_step", lambda r: r.grok),
    RunEntry("Grok and flip", "grok_crossing", lambda r: r.grok_crossing),
    RunEntry("Grok and flip", "flip_step", lambda r: r.flip),
    RunEntry("Grok and flip", "flip_return", lambda r: r.flip_return),
    RunEntry("Grok and flip", "flip_minus_grok", lambda r: r.flip - r.grok),
    RunEntry("Grok and flip", "rotation_v1_mean", mean_rotation),
    *(RunEntry("Table 7: g₂₃ decline to grok", f"{key}_{variant}", table7_value(variant, key))
      for variant, keys in (("reference", ("decline", "g23_early", "g23_grok", "R_early", "R_grok")),
                            ("robust", ("decline", "g23_early", "g23_grok")))
      for key in keys),
    RunEntry("Table 7: g₂₃ decline to grok", "k_star_mode", table7_value("reference", "k_star_mode")),
    RunEntry("Table 7: g₂₃ decline to grok", "k_star_frac_1", table7_value("reference", "k_star_frac_1")),
    *(RunEntry("Universality statistics (after grok)", name, universality_mean(name))
      for name in ("grad_frac_v1", "rotation_v1_deg", "func_r2_v1")),
]

PHASE_ENTRIES: list[PhaseEntry] = [
    PhaseEntry("Edge spectrum (windows)", "window", r"edge/grad_frac_v[12]", percent=True),
    PhaseEntry("Edge spectrum (windows)", "window", r"edge/alignment_v1"),
    PhaseEntry("Edge spectrum (windows)", "window", r"edge/cos_theta_v[12]"),
    PhaseEntry("Edge spectrum (windows)", "window", r"edge/(g23|k_star|gap_ratio)"),
    PhaseEntry("Edge spectrum (windows)", "window", r"edge/rotation_(v1|span12)_deg"),
    PhaseEntry("Edge spectrum (windows)", "window", r"edge/sigma_[1-3]"),
    PhaseEntry("Edge spectrum (windows)", "window", r"update/theta_norm"),
    PhaseEntry("Edge spectrum (windows)", "window", r"val/acc"),
    PhaseEntry("Ablation Δacc", "causal", r"ablation/base/accuracy"),
    PhaseEntry("Ablation Δacc", "causal", r"ablation/[^/]+/delta_acc"),
    PhaseEntry("Ablation removed norm", "causal", r"ablation/[^/]+/removed_norm"),
    PhaseEntry("Curvature", "causal", r"curvature/v\d+/(hvp|fd|sigma|delta_loss)"),
    PhaseEntry("Curvature", "causal", r"curvature/random/(hvp|fd)_mean"),
    PhaseEntry("Curvature", "causal", r"perturb/.+/max_kl(_mean)?"),
    PhaseEntry("Probes", "probe", r"probe/.+"),
    PhaseEntry("Fourier and attention", "causal", r"fourier/[^/]+/(ref_)?(top1|top3|omega_star)"),
    PhaseEntry("Fourier and attention", "causal", r"attention/[^/]+/entropy_(mean|all)"),
    PhaseEntry("Fourier and attention", "causal", r"fourier_edge/.+"),
    PhaseEntry("Final state", "window", r"val/acc|weights/norm_all|update/theta_norm", phases=("final",)),
]

# Ratios memo / grok of group means (bootstrap over the seeds of each): (tag pattern, phase).
CONTRASTS: list[tuple[str, str]] = [
    (r"curvature/v\d+/hvp", "late"),
    (r"ablation/edge/delta_acc", "late"),
]


def natural_key(tag: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", tag)]


def run_phase_steps(run: Run, family: str, measured: np.ndarray, mode: str, memo_grok: Optional[float]) -> dict[str, float]:
    """phase -> step of ``family`` for this run (docs/methods.md §12.1).

    aligned: offsets from the run's own grok step; a run that never groks is aligned at ``memo_grok`` when given,
    else reads the reference's fixed steps of its task. reference: the fixed steps for every run.
    """
    if mode == "aligned" and (math.isfinite(run.grok) or memo_grok is not None):
        grok = run.grok if math.isfinite(run.grok) else float(memo_grok)
        return phase_steps(ALIGNED[family], grok, measured, run.last_step)
    fixed = REFERENCE.get(run.task, {}).get(family, {})
    return phase_steps(fixed, 0.0, measured, run.last_step)  # absolute steps


@dataclass
class Row:
    section: str
    metric: str
    phase: str
    group: str
    values: list[float]  # one per run of the group (NaN: not measured)
    steps: list[float]  # the step each run was read at
    stats: dict[str, float] = field(default_factory=dict)
    paper: Optional[float] = None
    paper_source: str = ""
    inside_ci: Optional[bool] = None


def attach_paper(row: Row, group: Group, scale: float, seed: Optional[int] = None) -> None:
    found = paper_value(row.metric, row.phase, group.task, group.regime, seed)
    if found is not None:
        row.paper, row.paper_source = found.value * scale, found.source
        row.inside_ci = inside(row.paper, row.stats["ci_low"], row.stats["ci_high"], found.rounding * scale)


def build_rows(groups: list[Group], mode: str = "aligned", memo_grok: Optional[float] = None) -> list[Row]:
    rows: list[Row] = []
    for entry in RUN_ENTRIES:
        for group in groups:
            values = [float(entry.extract(run)) for run in group.runs]
            row = Row(entry.section, entry.name, "run", group.label, values, [math.nan] * len(values), summarise(values))
            row.stats["median_ci_low"], row.stats["median_ci_high"] = median_ci(values)
            attach_paper(row, group, 1.0)
            rows.append(row)
    tags = sorted({t for g in groups for r in g.runs for t in r.scalars}, key=natural_key)
    seen: set[tuple[str, str]] = set()
    for entry in PHASE_ENTRIES:
        for tag in (t for t in tags if re.fullmatch(entry.pattern, t)):
            if (entry.section, tag) in seen:
                continue
            seen.add((entry.section, tag))
            scale = 100.0 if entry.percent else 1.0
            known = set(ALIGNED[entry.family]).union(*(ref.get(entry.family, {}) for ref in REFERENCE.values()))
            phases = entry.phases or [p for p in PHASE_ORDER if p in known or p == "final"]
            for phase in phases:
                for group in groups:
                    values, steps = [], []
                    for run in group.runs:
                        measured = run.scalars[tag][0] if tag in run.scalars else np.zeros(0)
                        step = run_phase_steps(run, entry.family, measured, mode, memo_grok).get(phase, math.nan)
                        steps.append(step)
                        values.append(value_at(run.scalars, tag, int(step)) * scale if math.isfinite(step) else math.nan)
                    row = Row(entry.section, tag, phase, group.label, values, steps, summarise(values))
                    attach_paper(row, group, scale)
                    rows.append(row)
    return rows


def build_contrasts(groups: list[Group], rows: list[Row]) -> list[dict[str, Any]]:
    """memo / grok ratios of group means with bootstrap intervals, for each task with both regimes."""
    out = []
    for task in sorted({g.task for g in groups}):
        grok = [g for g in groups if g.task == task and g.regime == "grok"]
        memo = [g for g in groups if g.task == task and g.regime == "memo"]
        if len(grok) != 1 or len(memo) != 1:
            continue
        for pattern, phase in CONTRASTS:
            for row_g in (r for r in rows if r.group == grok[0].label and r.phase == phase and re.fullmatch(pattern, r.metric)):
                row_m = next(r for r in rows if r.group == memo[0].label and r.phase == phase and r.metric == row_g.metric)
                ratio = row_m.stats["mean"] / row_g.stats["mean"] if row_g.stats["n"] and row_m.stats["n"] else math.nan
                low, high = ratio_of_means_ci(row_m.values, row_g.values)
                out.append({"metric": row_g.metric, "phase": phase, "numerator": memo[0].label, "denominator": grok[0].label,
                            "ratio": ratio, "ci_low": low, "ci_high": high})
    return out


# ------------------------------------------------------------------------------------------------ output
def fmt(x: Optional[float]) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    a = abs(x)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{x:.2e}"
    return f"{x:.4g}" if a < 100 else f"{x:.0f}"


def cell(row: Row) -> str:
    s = row.stats
    if not s["n"]:
        return "–"
    text = f"{fmt(s['mean'])} ± {fmt(s['std'])} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}] n={s['n']}"
    if row.paper is not None:
        mark = {True: "✓", False: "✗", None: "?"}[row.inside_ci]
        text += f" · paper {fmt(row.paper)} {mark}"
    return text


def markdown(groups: list[Group], rows: list[Row], contrasts: list[dict[str, Any]], mode: str) -> str:
    lines = [f"# lit-grok report ({mode} phases)", ""]
    lines.append("| group | task | regime | runs (seeds) | finished (else: final = last logged step) |")
    lines.append("|---|---|---|---|---|")
    for g in groups:
        lines.append(f"| {g.label} | {g.task} | {g.regime} | {len(g.runs)} ({', '.join(str(r.seed) for r in g.runs)}) | "
                     f"{sum(r.finished for r in g.runs)} of {len(g.runs)} |")
    lines += ["", "Cells: mean ± std (ddof 1) [95 % Student-t CI] n over seeds; paper value ✓ inside our CI, ✗ outside, "
              "? no CI (n < 2). Percentages in %.", ""]
    lines += ["## Grok and flip, per run", "",
              "| group | seed | grok step | crossing | flip (grad% v₁ < 50 %) | return (≥ 50 %) | flip − grok | paper grok |",
              "|---|---|---|---|---|---|---|---|"]
    for g in groups:
        for r in g.runs:
            pv = paper_value("grok_step", "run", g.task, g.regime, r.seed)
            lines.append(f"| {g.label} | {r.seed} | {fmt(r.grok)} | {fmt(r.grok_crossing)} | {fmt(r.flip)} | "
                         f"{fmt(r.flip_return)} | {fmt(r.flip - r.grok)} | {fmt(pv.value) if pv else '–'} |")
    by_section: dict[str, list[Row]] = {}
    for row in rows:
        by_section.setdefault(row.section, []).append(row)
    labels = [g.label for g in groups]
    for section, members in by_section.items():
        table: dict[tuple[str, str], dict[str, Row]] = {}
        for row in members:
            table.setdefault((row.metric, row.phase), {})[row.group] = row
        kept = {k: v for k, v in table.items() if any(r.stats["n"] for r in v.values())}
        if not kept:
            continue
        lines += ["", f"## {section}", "", "| metric | phase | " + " | ".join(labels) + " |",
                  "|---|---|" + "---|" * len(labels)]
        for (metric, phase), cells in kept.items():
            lines.append(f"| {metric} | {phase} | " + " | ".join(cell(cells[l]) if l in cells else "–" for l in labels) + " |")
        if section == "Grok and flip":
            lines.append("")
            for row in (r for r in members if r.metric == "flip_minus_grok" and r.stats["n"]):
                lines.append(f"- {row.group}: median flip − grok {fmt(row.stats['median'])} steps, bootstrap 95 % CI "
                             f"[{fmt(row.stats['median_ci_low'])}, {fmt(row.stats['median_ci_high'])}]")
        if section == "Ablation Δacc":
            lines += ["", "Intervals are across seeds (one Δacc per seed). Within one run, ablation.json's `ci_sequence` "
                      "(tags `ablation/<set>/delta_acc_seq_low|high`) is the sequence-clustered interval: the tokens of "
                      "a sequence are not independent trials."]
    lines += ["", "## Universality class per run (docs/methods.md §11.4: compression ⇔ grad% v₁ < 10 %, Func R² < 0.2, "
              "rotation < 10°; functional ⇔ grad% > 90 %, Func R² > 0.9; else mixed; means after grok)", "",
              "| group | seed | class | intervals on one side | grad% v₁ | rotation v₁ (°) | Func R² v₁ |", "|---|---|---|---|---|---|---|"]
    for g in groups:
        for r in g.runs:
            found = r.universality
            if found["status"] != "ok":
                lines.append(f"| {g.label} | {r.seed} | – ({found['reason']}) | | | | |")
                continue
            st = found["statistics"]
            lines.append(f"| {g.label} | {r.seed} | {found['class']} | {'yes' if found['certain'] else 'no'} | "
                         f"{fmt(100 * st['grad_frac_v1']['mean'])} | {fmt(st['rotation_v1_deg']['mean'])} | "
                         f"{fmt(st['func_r2_v1']['mean'])} |")
    if contrasts:
        lines += ["", "## memo / grok ratios of means (bootstrap 95 % CI over seeds)", "",
                  "| metric | phase | ratio | CI |", "|---|---|---|---|"]
        for c in contrasts:
            lines.append(f"| {c['metric']} | {c['phase']} | {fmt(c['ratio'])} | [{fmt(c['ci_low'])}, {fmt(c['ci_high'])}] |")
    return "\n".join(lines) + "\n"


def clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def write_outputs(out: Path, groups: list[Group], rows: list[Row], contrasts: list[dict[str, Any]], mode: str,
                  text: str) -> None:
    payload = {
        "phases": mode,
        "groups": [{"label": g.label, "task": g.task, "regime": g.regime, "runs": [
            {"path": str(r.path), "seed": r.seed, "grok_step": r.grok, "grok_crossing": r.grok_crossing,
             "flip_step": r.flip, "flip_return": r.flip_return, "weight_decay": r.weight_decay,
             "last_step": r.last_step, "finished": r.finished} for r in g.runs]}
            for g in groups],
        "rows": [{"section": r.section, "metric": r.metric, "phase": r.phase, "group": r.group, "values": r.values,
                  "steps": r.steps, **r.stats, "paper": r.paper, "paper_source": r.paper_source, "inside_ci": r.inside_ci}
                 for r in rows],
        "contrasts": contrasts,
    }
    (out / "report.json").write_text(json.dumps(clean(payload), indent=1))
    fields = ["section", "metric", "phase", "group", "n", "mean", "std", "ci_low", "ci_high", "median", "paper",
              "paper_source", "inside_ci"]
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in rows:
            merged = {"section": r.section, "metric": r.metric, "phase": r.phase, "group": r.group, **r.stats,
                      "paper": r.paper, "paper_source": r.paper_source, "inside_ci": r.inside_ci}
            writer.writerow(["" if clean(merged.get(k)) is None else merged[k] for k in fields])
    (out / "report.md").write_text(text)


def load_population(paths: list[str]) -> list[Run]:
    runs = [run for p in paths for run in find_runs(p) if FIGURE_EVENTS not in run.parts]
    unique = list(dict.fromkeys(r.resolve() for r in runs))
    if not unique:
        raise ConfigurationError(f"no run folders under {' '.join(paths)} (only the report's own figures)")
    return [load_run(r) for r in unique]


def population_report(paths: list[str], out: Optional[str], mode: str, memo_grok: str, figures: bool = True) -> str:
    runs = load_population(paths)
    groups = group_runs(runs)
    grok_steps = [r.grok for g in groups for r in g.runs if math.isfinite(r.grok)]
    if memo_grok == "median":
        memo_at: Optional[float] = float(statistics.median(grok_steps)) if grok_steps else None
    elif memo_grok == "reference":
        memo_at = None
    else:
        memo_at = float(memo_grok)
    rows = build_rows(groups, mode, memo_at)
    contrasts = build_contrasts(groups, rows)
    text = markdown(groups, rows, contrasts, mode)
    out_dir = Path(out or paths[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    if figures:
        from lit_grok.population_figures import draw_all

        drawn = draw_all(groups, out_dir, mode, memo_at)
        text += "\n## Figures\n\n" + "\n".join(f"- {p.name}" for p in drawn) + "\n"
    write_outputs(out_dir, groups, rows, contrasts, mode, text)
    return text
