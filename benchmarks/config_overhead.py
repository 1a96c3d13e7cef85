"""Overhead of a config's callbacks, measured inside one training run: time spent in each callback's hooks
against the rest of the run (training, validation, logging), both from Lightning's ``SimpleProfiler``.

    python benchmarks/config_overhead.py --config configs/dyck.yaml --config configs/dyck_causal.yaml --steps 5000

``UpdateRecorder`` works in optimizer-step hooks, which the profiler counts as training; ``speed.py``
measures that part side by side with a plain loop.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict

import torch
from lightning.pytorch.profilers import SimpleProfiler

from lit_grok.cli import LitGrokCLI


def callback_seconds(profiler: SimpleProfiler) -> dict[str, float]:
    """Callback -> seconds spent in its hooks. Actions are named ``[Callback]{state_key}.{hook}``; a class
    used twice (different state keys) gets "#2", "#3" after its name."""
    by_key: dict[str, float] = defaultdict(float)
    for action, durations in profiler.recorded_durations.items():
        if action.startswith("[Callback]"):
            by_key[action.removeprefix("[Callback]").rsplit(".", 1)[0]] += sum(durations)
    out: dict[str, float] = {}
    for key, seconds in by_key.items():
        name = key.split("{")[0]
        label, n = name, 1
        while label in out:
            n += 1
            label = f"{name}#{n}"
        out[label] = seconds
    return out


def profiled_fit(configs: list[str], steps: int, workdir: str) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``fit`` for ``configs`` (base first, then overrides) and the seconds in each callback's hooks."""
    cli = LitGrokCLI(
        run=False,
        args=[*(arg for config in configs for arg in ("--config", config)), f"--trainer.max_steps={steps}", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={workdir}",
              "--trainer.logger.init_args.save_dir", workdir],
        trainer_defaults={"profiler": {"class_path": "lightning.pytorch.profilers.SimpleProfiler",
                                       "init_args": {"dirpath": workdir, "filename": "profile"}}},
    )
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    total = time.perf_counter() - start
    return total, callback_seconds(cli.trainer.profiler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, action="append", help="a config; repeat for base + overrides")
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        total, per_callback = profiled_fit(args.config, args.steps, workdir)
    in_callbacks = sum(per_callback.values())
    rest = total - in_callbacks
    print(f"{' + '.join(args.config)}, {args.steps} steps, {torch.get_num_threads()} thread(s): fit {total:.1f} s, "
          f"of which callbacks {in_callbacks:.1f} s")
    for name, seconds in sorted(per_callback.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {seconds:8.2f} s  {100 * seconds / rest:+7.2f} % of the run without callbacks")
    print(f"total callback overhead: {100 * in_callbacks / rest:+.1f} % (callbacks {in_callbacks:.1f} s / rest {rest:.1f} s)")


if __name__ == "__main__":
    main()
