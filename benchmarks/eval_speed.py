"""Evaluation time, old path against new, alternating inside every round on the same model and data.

    python benchmarks/eval_speed.py --task dyck --threads 1   # 5,000 test + 50 train sequences, all metrics
    python benchmarks/eval_speed.py --task scan --threads 1 --rounds 2 --warmup 0         # one SCAN evaluation
    python benchmarks/eval_speed.py --task scan --threads 1 --checkpoint RUN/checkpoints/epoch=0-step=5000.ckpt
    python benchmarks/eval_speed.py --task scan_greedy --threads 1 --rounds 2 --warmup 0  # its greedy decoding

dyck: padded batches of every row (before #11) against distinct rows counted per copy, length-sorted.
scan: padded teacher-forced batches and the decoder re-run on every prefix (before #11) against
length-sorted chunks and the incremental decoder with a KV cache, on the seed-2024 model trained
--train-steps steps first (~1 min). The old paths are tests/reference_paths.py; every round checks
that both give the same accuracies.
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


def trained_scan_model(steps: int):
    """The seed-2024 ScanTransformer after ``steps`` steps of configs/scan.yaml's training (AdamW, clip 1.0)."""
    from lit_grok.data.scan import ScanDataModule
    from lit_grok.models.scan import ScanTransformer

    torch.manual_seed(2024)
    model, dm = ScanTransformer(), ScanDataModule()
    opt, stream = model.configure_optimizers(), iter(dm.train_dataloader())
    for _ in range(steps):
        loss = model.length_sorted_loss(*next(stream))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval(), dm


def scan_variants(train_steps: int, checkpoint: str | None, greedy_only: bool):
    from lit_grok.data.scan import ScanDataModule
    from lit_grok.models.scan import EVAL_SETS, ScanTransformer, greedy_exact_match

    if checkpoint:  # a run's own model: how sure it is decides how many rows greedy_matches decodes
        model, dm = ScanTransformer.load_from_checkpoint(checkpoint, map_location="cpu").eval(), ScanDataModule()
    else:
        model, dm = trained_scan_model(train_steps)
    loaders = dict(zip(EVAL_SETS, dm.val_dataloader()))  # 500 test-eval pairs (decoded too), 2048 training pairs
    if greedy_only:
        loaders = {"val": loaders["val"]}

    def old():
        out = []
        for name, loader in loaders.items():
            if not greedy_only:
                ref = padded_token_metrics(model, [(src, tgt_in, tgt_out) for src, tgt_in, tgt_out in loader], dm.tgt_vocab_size)
                out += [ref["acc"], ref["seq_acc"]]
            if name == "val":
                hits = [greedy_exact_match(prefix_greedy_decode(model, src, tgt_out.shape[1])[0], tgt_out) for src, _, tgt_out in loader]
                out.append(float(torch.cat(hits).float().mean()))
        return out

    def new():
        out = []
        for name, loader in loaders.items():
            if greedy_only:
                hits = [greedy_exact_match(model.greedy_decode(src, tgt_out.shape[1]), tgt_out) for src, _, tgt_out in loader]
                out.append(float(torch.cat(hits).float().mean()))
                continue
            for metric in (model.metrics[name].loss, model.metrics[name].acc, model.seq_acc[name], model.greedy_acc):
                metric.reset()
            for batch in loader:
                model.update_eval_metrics(name, *batch)
            out += [float(model.metrics[name].acc.compute()), float(model.seq_acc[name].compute())]
            if name == "val":
                out.append(float(model.greedy_acc.compute()))
        return out

    what = "greedy decoding of the 500 test-eval commands" if greedy_only else (
        "evaluation (teacher-forced 500 test-eval + 2048 train pairs, greedy decoding of the 500)")
    which = checkpoint or f"seed-2024 model after {train_steps} training steps"
    return f"SCAN {what}, {which} (s)", old, new


VARIANTS = {
    "dyck": lambda args: dyck_variants(),
    "scan": lambda args: scan_variants(args.train_steps, args.checkpoint, greedy_only=False),
    "scan_greedy": lambda args: scan_variants(args.train_steps, args.checkpoint, greedy_only=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(VARIANTS), default="dyck")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--train-steps", type=int, default=50,
                        help="scan: training steps before timing (the initial model stops decoding after 16 tokens)")
    parser.add_argument("--checkpoint", help="scan: evaluate this checkpoint's ScanTransformer instead of training one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    title, old, new = VARIANTS[args.task](args)
    times: dict[str, list[float]] = {"old": [], "new": []}
    with torch.no_grad():
        for r in range(1 - args.warmup, args.rounds + 1):  # rounds < 1 warm up
            results = {}
            for name, run in (("old", old), ("new", new)):
                start = time.perf_counter()
                results[name] = run()
                if r > 0:
                    times[name].append(time.perf_counter() - start)
            if results["old"] != results["new"]:
                raise SystemExit(f"old and new paths disagree: {results['old']} vs {results['new']}")
            if r > 0:
                print(f"round {r}: old {times['old'][-1]:.3f} s, new {times['new'][-1]:.3f} s", flush=True)
    old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
    print(f"\n{title}, torch threads {torch.get_num_threads()}, {args.rounds} rounds, lit_grok from {Path(lit_grok.__file__).parent}")
    print(f"  old {old_s:.3f} s   new {new_s:.3f} s   new / old = {new_s / old_s:.3f}   speed-up {old_s / new_s:.2f}x")


if __name__ == "__main__":
    main()
