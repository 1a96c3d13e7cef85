"""``lit-grok report RUN_OR_SWEEP_DIR...``: the numbers and pictures of runs, read back from their TensorBoard events.

Population form (default): runs grouped by configuration, seeds as replicates, the paper's tables at each run's
own phases with mean, std and intervals across seeds, the paper's values beside them, and the figures
(``lit_grok.population``). Per-run form (``--steps`` / ``--tags`` / ``--window`` / ``--figure``): the grok step
and the spectral-edge scalars at chosen steps, and the lifecycle figure (task accuracy, σ_k, grad% along v_k,
|cos(θ, v_k)|) with the grok step marked.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_grok.callbacks import ConfigurationError

PANELS = (
    ("task accuracy", ("val/acc", "val/seq_acc", "val/greedy_acc", "train_eval/acc")),
    ("σ_k of the update window", tuple(f"edge/sigma_{k}" for k in range(1, 6))),
    ("gradient share of the update along v_k (grad%)", tuple(f"edge/grad_frac_v{k}" for k in range(1, 6))),
    ("|cos(θ, v_k)|", tuple(f"edge/cos_theta_v{k}" for k in range(1, 6))),
)


def find_runs(path: str | Path) -> list[Path]:
    """The run folders at or under ``path``: folders that hold TensorBoard event files themselves."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigurationError(f"{path} is not a folder; pass a run folder such as logs/dyck/version_0")
    runs = sorted({p.parent for p in path.rglob("events.out.tfevents.*")})
    if not runs:
        raise ConfigurationError(f"no TensorBoard event files under {path}; pass a run folder such as logs/dyck/version_0")
    return runs


def read_scalars(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag -> (steps [n], values [n]) for every scalar of one run folder (all its event files, in order).

    A run resumed into its own folder logs again the steps after its checkpoint: as TensorBoard does for
    a restart, a value logged at a step at or before one already seen replaces the values from there on.
    """
    if not any(Path(run_dir).glob("events.out.tfevents.*")):
        raise ConfigurationError(f"no TensorBoard event files in {run_dir}; pass a run folder such as logs/dyck/version_0")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        kept: list[tuple[int, float]] = []
        for event in acc.Scalars(tag):
            while kept and kept[-1][0] >= event.step:
                kept.pop()
            kept.append((event.step, event.value))
        out[tag] = (np.array([s for s, _ in kept]), np.array([v for _, v in kept]))
    return out


def value_at(scalars: dict, tag: str, step: int) -> float:
    """The value logged for ``tag`` after optimizer step ``step`` (NaN if none).

    Lightning writes validation metrics at step − 1 (its count of batches before the one just
    stepped), callbacks at the optimizer step itself; both describe the weights after ``step``.
    """
    if tag not in scalars:
        return math.nan
    steps, values = scalars[tag]
    for s in (step, step - 1):
        hit = np.nonzero(steps == s)[0]
        if hit.size:
            return float(values[hit[-1]])
    return math.nan


def median_over(scalars: dict, tag: str, step: int, window: int) -> float:
    """Median of the values of ``tag`` for steps ``step − window`` .. ``step`` (NaN if none).

    One evaluation can land in a transient loss spike; the median over a window says where the run is.
    The window reaches one step further back, where Lightning writes the validation of step − window.
    """
    if tag not in scalars:
        return math.nan
    steps, values = scalars[tag]
    kept = values[(steps >= step - window - 1) & (steps <= step)]
    return float(np.median(kept)) if kept.size else math.nan


def summary(scalars: dict, steps: list[int], tags: list[str], window: int = 0) -> str:
    """A table of ``tags`` at ``steps``; with ``window`` > 0, each value is the median over steps s − window .. s."""
    grok = scalars.get("grok/step")
    lines = [f"grok step: {int(grok[1][0]) if grok else 'not reached'}"]
    if window:
        lines.append(f"(median over steps s − {window} .. s)")
    widths = [max(len(t), 10) + 2 for t in tags]
    lines.append("step".rjust(8) + "".join(t.rjust(w) for t, w in zip(tags, widths)))
    for s in steps:
        row = (median_over(scalars, t, s, window) if window else value_at(scalars, t, s) for t in tags)
        lines.append(str(s).rjust(8) + "".join(f"{v:{w}.4f}" for v, w in zip(row, widths)))
    return "\n".join(lines)


def lifecycle_figure(scalars: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PANELS), 1, figsize=(8, 2.6 * len(PANELS)), sharex=True)
    grok = scalars.get("grok/step")
    for ax, (title, tags) in zip(axes, PANELS):
        for tag in tags:
            if tag in scalars:
                ax.plot(*scalars[tag], label=tag.removeprefix("edge/"), lw=1.2)
        if grok:
            ax.axvline(grok[1][0], color="k", ls="--", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, ncol=5, loc="best")
    axes[1].set_yscale("log")
    axes[-1].set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


PER_RUN_STEPS = [300, 600, 1500, 4000]
PER_RUN_TAGS = ["val/acc", "edge/grad_frac_v1", "edge/cos_theta_v1", "edge/g23", "update/theta_norm"]


def report_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lit-grok report", description=__doc__)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_OR_SWEEP_DIR",
                        help="run folders (logs/dyck/version_0), or folders of runs (a sweep's --out)")
    per_run = parser.add_argument_group("per-run form (any of these options selects it)")
    per_run.add_argument("--steps", type=int, nargs="+", default=None, help=f"steps to tabulate (default {PER_RUN_STEPS})")
    per_run.add_argument("--tags", nargs="+", default=None, help=f"tags to tabulate (default {' '.join(PER_RUN_TAGS)})")
    per_run.add_argument(
        "--window", type=int, default=None, help="tabulate the median over steps s − WINDOW .. s (0: the value at s)"
    )
    per_run.add_argument("--figure", default=None, help="PNG path for a single run (default: RUN_DIR/lifecycle.png)")
    population = parser.add_argument_group("population form (the default)")
    population.add_argument("--out", default=None, help="folder for report.md/json/csv and the figures (default: the first folder)")
    population.add_argument("--phases", choices=("aligned", "reference"), default="aligned",
                            help="aligned: offsets from each run's grok step; reference: the reference scripts' fixed steps")
    population.add_argument("--memo-grok", default="reference", metavar="reference|median|STEP",
                            help="runs that never grok: the reference's fixed steps, the median grok step of the "
                                 "grokking runs, or a step (aligned phases only)")
    population.add_argument("--no-figures", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    if args.window is not None and args.window < 0:
        parser.error(f"--window must be >= 0, got {args.window}")
    if args.memo_grok not in ("reference", "median") and not args.memo_grok.isdigit():
        parser.error(f"--memo-grok must be reference, median or a step, got {args.memo_grok!r}")
    if args.steps is None and args.tags is None and args.window is None and args.figure is None:
        from lit_grok.population import population_report

        print(population_report(args.run_dirs, args.out, args.phases, args.memo_grok, figures=not args.no_figures))
        return
    steps, tags, window = args.steps or PER_RUN_STEPS, args.tags or PER_RUN_TAGS, args.window or 0
    if args.figure and len(args.run_dirs) > 1:
        parser.error("--figure names one file; with several runs each figure goes to RUN_DIR/lifecycle.png")
    runs = [run for path in args.run_dirs for run in find_runs(path)]
    if args.figure and len(runs) > 1:
        parser.error(f"--figure names one file, but {args.run_dirs[0]} holds {len(runs)} runs")
    if args.figure and not Path(args.figure).resolve().parent.is_dir():
        raise ConfigurationError(f"--figure {args.figure}: folder {Path(args.figure).parent} does not exist; create it first")
    all_scalars = [(run, read_scalars(run)) for run in runs]
    known = set().union(*(scalars for _, scalars in all_scalars))
    unknown = [tag for tag in tags if tag not in known]
    if unknown:
        raise ConfigurationError(f"--tags {' '.join(unknown)}: not logged by {'this run' if len(runs) == 1 else 'these runs'}; "
                                 f"logged tags: {' '.join(sorted(known))}")
    for run_dir, scalars in all_scalars:
        print(f"== {run_dir}")
        print(summary(scalars, steps, tags, window))
        figure = lifecycle_figure(scalars, Path(args.figure or Path(run_dir) / "lifecycle.png"))
        print(f"figure: {figure}")
