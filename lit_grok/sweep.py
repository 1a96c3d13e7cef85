"""``lit-grok sweep``: a grid of ``lit-grok fit`` runs (seeds × overrides) executed as Ray tasks.

Each trial is one ``lit-grok fit`` in its own folder ``OUT/<trial>/version_0``, run as a subprocess
of a Ray task holding ``--cpus-per-trial`` CPUs (and ``--gpus-per-trial`` GPUs). Without ``--address`` Ray
starts on this machine and runs as many trials at once as it has CPUs; ``--address auto`` (or
``ray://HOST:10001``) joins a cluster. A finished trial (``done.json``) is skipped on a rerun; a failed
one is reported with its log and, on the rerun, resumes from its last checkpoint.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

DONE = "done.json"
# Ray workers import this module to run ``run_trial``: it imports nothing heavy (torch, Lightning) at the top.


def config_error(message: str) -> Exception:
    from callbacks import ConfigurationError

    return ConfigurationError(message)


@dataclass(frozen=True)
class Trial:
    """One run of the grid: its name (its folder), the ``lit-grok fit`` arguments that make it, its folder."""

    name: str
    overrides: tuple[str, ...]  # "--seed_everything=42", "--model.init_args.weight_decay=0.0", ...
    folder: Path  # OUT/<name>/version_0

    @property
    def resumable(self) -> bool:
        """An earlier attempt left a checkpoint to continue from."""
        return (self.folder / "checkpoints" / "last.ckpt").is_file()

    def command(self, configs: Sequence[str], extra: Sequence[str], out: Path) -> list[str]:
        resume = ["--ckpt_path=last"] if self.resumable else []
        return [sys.executable, "-m", "lit_grok.cli", "fit", *(a for c in configs for a in ("--config", c)),
                *self.overrides, *extra, f"--trainer.logger.init_args.save_dir={out}",
                f"--trainer.logger.init_args.name={self.name}", "--trainer.logger.init_args.version=0",
                "--trainer.enable_progress_bar=false", *resume]


def parse_grid(entries: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["model.init_args.weight_decay=1.0,0.0"]`` -> ``[("model.init_args.weight_decay", ["1.0", "0.0"])]``."""
    grid = []
    for entry in entries:
        key, sep, values = entry.partition("=")
        choices = [v for v in values.split(",") if v]
        if not sep or not key or not choices:
            raise config_error(f"--grid {entry!r}: write KEY=V1,V2,... (e.g. model.init_args.weight_decay=1.0,0.0)")
        grid.append((key.removeprefix("--"), choices))
    return grid


def make_trials(seeds: Sequence[int], grid: Sequence[tuple[str, list[str]]], out: Path) -> list[Trial]:
    """Every combination of seed and grid values, named ``seed=42,weight_decay=0.0`` (the key's last part)."""
    axes = [("seed_everything", [str(s) for s in seeds])] if seeds else []
    axes += list(grid)
    short = [key.rsplit(".", 1)[-1].replace("seed_everything", "seed") for key, _ in axes]
    if len(set(short)) != len(short):
        raise config_error(f"--grid keys must end in distinct names, got {[key for key, _ in axes]}")
    trials = []
    for values in itertools.product(*(choices for _, choices in axes)):
        name = ",".join(f"{s}={v}" for s, v in zip(short, values)) or "run"
        overrides = tuple(f"--{key}={v}" for (key, _), v in zip(axes, values))
        trials.append(Trial(name, overrides, out / name / "version_0"))
    return trials


def run_trial(command: list[str], folder: str, timeout: Optional[float]) -> dict:
    """Run one trial (inside a Ray task); its output goes to ``folder/fit.log``; ``done.json`` when it succeeds.
    A trial still running after ``timeout`` seconds is killed and reported failed (its checkpoints stay)."""
    os.makedirs(folder, exist_ok=True)
    start = time.time()
    with open(os.path.join(folder, "fit.log"), "a") as log:
        try:
            rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    result = {"rc": rc, "seconds": round(time.time() - start, 1), "command": command}
    if rc == 0:
        with open(os.path.join(folder, DONE), "w") as f:
            json.dump(result, f, indent=1)
    return result


def sweep(configs: Sequence[str], trials: Sequence[Trial], extra: Sequence[str], out: Path,
          address: Optional[str], cpus: float, gpus: float, timeout: Optional[float]) -> list[tuple[Trial, dict]]:
    """Run the trials not done yet as Ray tasks; print a line as each starts and ends; return the results."""
    import ray

    todo = [t for t in trials if not (t.folder / DONE).is_file()]
    for t in trials:
        if t not in todo:
            print(f"[skip] {t.name}: finished before ({t.folder / DONE})", flush=True)
    if not todo:
        return []
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(run_trial)
    pending = {}
    for t in todo:
        resumed = " (resuming from its last checkpoint)" if t.resumable else ""
        pending[task.remote(t.command(configs, extra, out), str(t.folder), timeout)] = t
        print(f"[queued] {t.name}{resumed}", flush=True)
    results = []
    while pending:
        (ref,), _ = ray.wait(list(pending))
        trial, result = pending.pop(ref), ray.get(ref)
        results.append((trial, result))
        state = "done" if result["rc"] == 0 else f"FAILED ({result['rc']}; log {trial.folder / 'fit.log'})"
        print(f"[{len(results)}/{len(todo)}] {trial.name}: {state} in {result['seconds']:.0f} s", flush=True)
    ray.shutdown()
    return results


def sweep_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lit-grok sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="a config; repeat for base + overrides")
    parser.add_argument("--seeds", type=int, nargs="*", default=[], help="values of seed_everything")
    parser.add_argument("--grid", nargs="*", default=[], metavar="KEY=V1,V2",
                        help="a config key and its values, e.g. model.init_args.weight_decay=1.0,0.0")
    parser.add_argument("--out", required=True, help="folder of the trials (OUT/<trial>/version_0)")
    parser.add_argument("--address", default=None, help="Ray cluster to join (auto, ray://HOST:10001); default: local")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0)
    parser.add_argument("--trial-timeout", type=float, default=None, help="seconds after which a trial is killed")
    args, extra = parser.parse_known_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        raise config_error('lit-grok sweep needs Ray: pip install -e ".[sweep]"') from None
    out, configs = Path(args.out).resolve(), [str(Path(c).resolve()) for c in args.config]  # trials run elsewhere
    trials = make_trials(args.seeds, parse_grid(args.grid), out)
    results = sweep(configs, trials, extra, out, args.address, args.cpus_per_trial, args.gpus_per_trial,
                    args.trial_timeout)
    failed = [t.name for t, r in results if r["rc"] != 0]
    print(f"{len(trials)} trials: {len(trials) - len(failed)} finished, {len(failed)} failed"
          + (f" ({', '.join(failed)}): rerun the same command to resume them" if failed else ""))
    if failed:
        sys.exit(1)
