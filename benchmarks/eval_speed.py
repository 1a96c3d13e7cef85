"""Evaluation time, old path against new, alternating inside every round on the same model and data.

    python benchmarks/eval_speed.py --task dyck --threads 1   # 5,000 test + 50 train sequences, all metrics
    python benchmarks/eval_speed.py --task scan --threads 1   # greedy decoding of the 500 test-eval commands
    python benchmarks/eval_speed.py --task scan --threads 1 --checkpoint logs/scan/version_0/checkpoints/last.ckpt

dyck: padded batches of every row (before #11) against distinct rows counted per copy, length-sorted.
scan: the decoder re-run on every prefix (before #11) against the incremental decoder with a KV cache.
The old paths are tests/reference_paths.py; each round checks the two give the same numbers.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's packages, and the reference paths

import torch  # noqa: E402
from reference_paths import dyck_eval_batches, padded_token_metrics, prefix_greedy_decode  # noqa: E402

import lit_grok  # noqa: E402
from lit_grok.models.common import TokenMetrics  # noqa: E402


def dyck_variants():
    from lit_grok.data.dyck import DyckDataModule
    from lit_grok.models.dyck import DyckTransformer

    torch.manual_seed(42)
    model, dm = DyckTransformer().eval(), DyckDataModule()
    padded = dyck_eval_batches(dm)

    def old():
        return [padded_token_metrics(model, batches, dm.n_classes)["acc"] for batches in padded.values()]

    def new():
        accs = []
        for loader in dm.val_dataloader():
            metrics = TokenMetrics()
            for x, y, copies in loader:
                model.update_distinct(metrics, x, y, copies)
            accs.append(float(metrics.acc.compute()))
        return accs

    return "Dyck evaluation, 5,000 test + 50 train sequences (s)", old, new


def scan_variants(checkpoint: str | None):
    from lit_grok.data.scan import ScanDataModule
    from lit_grok.models.scan import ScanTransformer

    torch.manual_seed(2024)
    model, dm = ScanTransformer(), ScanDataModule()
    if checkpoint:  # a state_dict or a Lightning checkpoint of the default ScanTransformer
        state = torch.load(checkpoint, map_location="cpu")
        model.load_state_dict(state.get("state_dict", state))
    model.eval()
    batches = list(dm.val_dataloader()[0])  # the 500 test-eval pairs, as validation decodes them

    def old():
        return [prefix_greedy_decode(model, src, tgt_out.shape[1])[0].tolist() for src, _, tgt_out in batches]

    def new():
        return [model.greedy_decode(src, tgt_out.shape[1]).tolist() for src, _, tgt_out in batches]

    which = f"the model of {checkpoint}" if checkpoint else "the seed-2024 initial model"
    return f"SCAN greedy decoding of the 500 test-eval commands by {which} (s)", old, new


VARIANTS = {"dyck": lambda args: dyck_variants(), "scan": lambda args: scan_variants(args.checkpoint)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(VARIANTS), default="dyck")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--checkpoint", help="scan: weights to decode with (default: the seed-2024 initial model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    title, old, new = VARIANTS[args.task](args)
    times: dict[str, list[float]] = {"old": [], "new": []}
    with torch.no_grad():
        for r in range(args.rounds + 1):  # round 0 warms up
            results = {}
            for name, run in (("old", old), ("new", new)):
                start = time.perf_counter()
                results[name] = run()
                if r:
                    times[name].append(time.perf_counter() - start)
            if results["old"] != results["new"]:
                raise SystemExit(f"old and new paths disagree: {results['old']} vs {results['new']}")
            if r:
                print(f"round {r}: old {times['old'][-1]:.3f} s, new {times['new'][-1]:.3f} s", flush=True)
    old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
    print(f"\n{title}, torch threads {torch.get_num_threads()}, {args.rounds} rounds, lit_grok from {Path(lit_grok.__file__).parent}")
    print(f"  old {old_s:.3f} s   new {new_s:.3f} s   new / old = {new_s / old_s:.3f}   speed-up {old_s / new_s:.2f}x")


if __name__ == "__main__":
    main()
