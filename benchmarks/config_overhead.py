"""Total overhead of a config's callbacks: the same training with and without them, alternating.

Runs ``lit-grok fit`` on ``--config`` and on ``--baseline`` (same seed, same steps) ``--rounds`` times,
alternately, and prints the wall-time ratio of whole runs (validation and callbacks included).

    python benchmarks/config_overhead.py --config configs/dyck_causal.yaml --baseline configs/dyck.yaml --steps 5000
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def timed_fit(config: str, steps: int, workdir: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "lit_grok.cli", "fit", "--config", config, f"--trainer.max_steps={steps}",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"],
        cwd=workdir, check=True, stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    times: dict[str, list[float]] = {args.baseline: [], args.config: []}
    with tempfile.TemporaryDirectory() as workdir:
        for r in range(args.rounds):
            for config in times:
                times[config].append(timed_fit(config, args.steps, workdir))
            print(f"round {r + 1}: " + ", ".join(f"{c} {t[-1]:.1f} s" for c, t in times.items()), flush=True)
    base, full = statistics.median(times[args.baseline]), statistics.median(times[args.config])
    print(f"{args.steps} steps: baseline {base:.1f} s, with callbacks {full:.1f} s, overhead {100 * (full / base - 1):+.1f} %")


if __name__ == "__main__":
    main()
