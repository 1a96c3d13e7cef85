"""glibc's default allocator against ``keep_freed_memory`` (what ``lit-grok`` sets), each round one fresh process per
setting, alternating: the Dyck analysis evaluation, the Dyck training step and the SCAN step in fp32 and bf16-mixed.

    python benchmarks/allocator.py --threads 1 [--rounds 3]

Prints the median of each figure per setting, their ratio, and the pages faulted in per unit of work.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's packages, and scan_step's step

SETTINGS = ("default", "keep_freed_memory")


def timed(work: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median seconds, mean pages faulted in) of ``repeats`` calls of ``work`` after one untimed."""
    work()
    seconds, faults = [], []
    for _ in range(repeats):
        before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return statistics.median(seconds), statistics.mean(faults)


def worker(setting: str, threads: int) -> dict[str, tuple[float, float]]:
    from lit_grok.allocator import keep_freed_memory

    if setting == "keep_freed_memory" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() did nothing here (not glibc, or MALLOC_* set in the environment)")
    import torch
    from scan_step import step as scan_step

    from lit_grok.callbacks.utils.evaluation import evaluate, evaluation_set
    from lit_grok.data.dyck import DyckDataModule
    from lit_grok.data.scan import ScanDataModule
    from lit_grok.models.common import masked_cross_entropy
    from lit_grok.models.dyck import DyckTransformer
    from lit_grok.models.scan import ScanTransformer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dyck, dyck_data = DyckTransformer(), DyckDataModule()
    dyck_data.setup("fit")
    analysis = evaluation_set(dyck.eval(), [batch[:2] for batch in dyck_data.val_dataloader()[0]])
    x, y = next(iter(dyck_data.train_dataloader()))
    dyck_opt = torch.optim.AdamW(dyck.parameters(), lr=1e-3, weight_decay=1.0)

    def dyck_step() -> None:
        loss = masked_cross_entropy(dyck.train()(x), y)
        dyck_opt.zero_grad(set_to_none=True)
        loss.backward()
        dyck_opt.step()

    scan, scan_data = ScanTransformer(), ScanDataModule()
    scan_data.setup("fit")
    batch = next(iter(scan_data.train_dataloader()))
    scan_opt = torch.optim.AdamW(scan.parameters(), lr=1e-4, weight_decay=1.0)
    return {
        "Dyck analysis evaluation, 5000 test rows": timed(lambda: evaluate(dyck.eval(), analysis, keep_outputs=True), 5),
        "Dyck training step": timed(dyck_step, 20),
        "SCAN step, fp32": timed(lambda: scan_step(scan, scan_opt, batch, True, False, False), 3),
        "SCAN step, bf16-mixed": timed(lambda: scan_step(scan, scan_opt, batch, True, True, True), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads)))
        return
    runs: dict[str, list[dict]] = {setting: [] for setting in SETTINGS}
    for _ in range(args.rounds):
        for setting in SETTINGS:
            out = subprocess.run([sys.executable, __file__, "--worker", setting, "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True, timeout=1800).stdout
            runs[setting].append(json.loads(out.splitlines()[-1]))
    print(f"{args.rounds} rounds, {args.threads} thread(s), a fresh process per setting and round")
    print(f"{'':42s} {'default':>18s} {'keep_freed_memory':>22s}   ratio")
    for name in runs["default"][0]:
        (old, old_faults), (new, new_faults) = ((statistics.median(r[name][0] for r in runs[s]),
                                                 statistics.median(r[name][1] for r in runs[s])) for s in SETTINGS)
        print(f"{name:42s} {old * 1e3:9.1f} ms {old_faults:6.0f} pf {new * 1e3:13.1f} ms {new_faults:6.0f} pf   {new / old:.3f}")


if __name__ == "__main__":
    main()
