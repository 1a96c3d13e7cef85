"""Evaluation inside the analyses (ablation, perturbation, component effects): every padded row vs each distinct row
once, counted per copy, on the Dyck test set, interleaved in rounds in one process.

    python benchmarks/analysis_eval.py [--rounds 5] [--checkpoint path/to/epoch=0-step=600.ckpt]

Prints ms per evaluation of each path, their ratio, and checks that the counts agree. One torch thread.
"""
from __future__ import annotations

import argparse
import time

import torch

from lit_grok.callbacks.utils.evaluation import evaluate, evaluation_set
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

    times = {"every row": [], "distinct rows": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        slow = evaluate(model, batches, keep_outputs=True)
        times["every row"].append(time.perf_counter() - start)
        start = time.perf_counter()
        fast = evaluate(model, evaluation_set(model, batches), keep_outputs=True)  # the fold included
        times["distinct rows"].append(time.perf_counter() - start)
    assert (slow.token_correct, slow.token_total) == (fast.token_correct, fast.token_total)
    median = {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}
    print(f"Dyck test set (5000 rows, {fast.token_total} labelled tokens), {args.rounds} rounds, 1 thread, median:")
    for name, ms in median.items():
        print(f"  {name:14s} {ms:8.1f} ms / evaluation")
    print(f"  ratio distinct / every = {median['distinct rows'] / median['every row']:.3f}; "
          f"counts equal, loss rel. diff {abs(fast.loss - slow.loss) / slow.loss:.1e}")


if __name__ == "__main__":
    main()
