"""Evaluation inside the analyses (ablation, perturbation, component effects) on the Dyck test set: every padded row,
each distinct row once in padded chunks (the previous path), and each distinct prefix once (``DyckTransformer``'s
prefix tree, the path now), every row counted per copy, interleaved in rounds in one process.

    python benchmarks/analysis_eval.py [--rounds 5] [--checkpoint path/to/epoch=0-step=600.ckpt]

Prints ms per evaluation of each path, their ratios, and checks that the counts agree. One torch thread.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the previous paths
from reference_paths import distinct_row_chunks  # noqa: E402

from lit_grok.callbacks.utils.evaluation import EvaluationSet, evaluate, evaluation_set
from lit_grok.data.dyck import DyckDataModule
from lit_grok.models.dyck import DyckTransformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checkpoint", default=None, help="a DyckTransformer checkpoint (default: the initial weights)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DyckTransformer() if args.checkpoint is None else DyckTransformer.load_from_checkpoint(args.checkpoint, map_location="cpu")
    model.eval()
    dm = DyckDataModule()
    batches = [batch[:2] for batch in dm.val_dataloader()[0]]  # the 5000 test rows, padded, as the analyses get them

    x, y = (torch.cat([batch[i] for batch in batches]) for i in (0, 1))
    paths = {  # name -> the evaluation's data, as each path builds it (the fold included in the timing)
        "every row": lambda: batches,
        "distinct rows": lambda: EvaluationSet(*map(list, zip(*distinct_row_chunks(x, y)))),
        "prefix tree": lambda: evaluation_set(model, batches),
    }
    times = {name: [] for name in paths}
    results = {}
    for _ in range(args.rounds):
        for name, data in paths.items():
            start = time.perf_counter()
            results[name] = evaluate(model, data(), keep_outputs=True)
            times[name].append(time.perf_counter() - start)
    slow = results["every row"]
    median = {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}
    print(f"Dyck test set (5000 rows, {slow.token_total} labelled tokens), {args.rounds} rounds, 1 thread, median:")
    for name, ms in median.items():
        fast = results[name]
        assert (slow.token_correct, slow.token_total, slow.seq_correct) == (fast.token_correct, fast.token_total, fast.seq_correct)
        print(f"  {name:14s} {ms:8.1f} ms / evaluation  ({median[name] / median['every row']:.3f}x every row, "
              f"{median[name] / median['distinct rows']:.3f}x distinct rows; loss rel. diff "
              f"{abs(fast.loss - slow.loss) / slow.loss:.1e}; counts equal)")


if __name__ == "__main__":
    main()
