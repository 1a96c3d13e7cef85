"""Side-by-side training speed: plain PyTorch loop, Lightning, and Lightning with lit-grok callbacks.

Variants alternate inside every round (same model, data, optimizer, seed), so machine noise hits all
of them alike; the ratios of median per-step times are printed at the end.

    python benchmarks/speed.py --task dyck --steps 200 --rounds 5
    python benchmarks/speed.py --task scan --steps 30 --rounds 3 --variants plain lightning
    python benchmarks/speed.py --task dyck --steps 100 --rounds 8 --variants reference plain

``reference`` (Dyck): the reference's training step, the same model through nn.TransformerEncoder's own forward (the
parameters it reaches are bit-equal to the ``plain`` loop's: tests/test_models.py).
"""
from __future__ import annotations

import argparse
import statistics
import time

import lightning.pytorch as pl
import torch

from callbacks import EdgeDecomposer, GramSpectrum, UpdateRecorder
from lit_grok.models.common import masked_cross_entropy

REFERENCE_INTERVAL = {"dyck": 100, "scan": 500}


def build(task: str):
    torch.manual_seed(0)
    if task == "dyck":
        from lit_grok.data.dyck import DyckDataModule
        from lit_grok.models.dyck import DyckTransformer

        return DyckTransformer(), DyckDataModule()
    from lit_grok.data.scan import ScanDataModule
    from lit_grok.models.scan import ScanTransformer

    return ScanTransformer(greedy_eval=False), ScanDataModule()


def training_loss(task: str, model: pl.LightningModule, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The loss the module's ``training_step`` computes, without Lightning (SCAN: the length-sorted decoder)."""
    if task == "dyck":
        x, y = batch
        return masked_cross_entropy(model(x), y)
    return model.length_sorted_loss(*batch)


def plain_step_seconds(task: str, steps: int, warmup: int, reference: bool = False) -> float:
    model, dm = build(task)
    opt = model.configure_optimizers()
    batches = iter(dm.train_dataloader())
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        batch = next(batches)
        if reference:  # Dyck through nn.TransformerEncoder itself
            loss = masked_cross_entropy(model.encoder_forward(batch[0]), batch[1])
        else:
            loss = training_loss(task, model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return (time.perf_counter() - start) / steps


class StepTimer(pl.Callback):
    """Wall time from the first step after warm-up to the last step's end."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def edge_callbacks(interval: int) -> list[pl.Callback]:
    return [UpdateRecorder("attn_weights", interval=interval, window=5), GramSpectrum(top_k=5), EdgeDecomposer(top_k=5)]


def lightning_step_seconds(task: str, steps: int, warmup: int, extra: list[pl.Callback], log_dir: str) -> float:
    model, dm = build(task)
    timer = StepTimer(warmup)
    logger = pl.loggers.TensorBoardLogger(log_dir, name=f"bench_{task}")
    trainer = pl.Trainer(
        max_steps=warmup + steps, gradient_clip_val=1.0, limit_val_batches=0, logger=logger, log_every_n_steps=50,
        callbacks=[timer, *extra], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, dm)
    return (timer.end - timer.start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("dyck", "scan"), default="dyck")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["plain", "lightning", "edge_reference", "edge_every_step"],
                        choices=["reference", "plain", "lightning", "edge_reference", "edge_every_step"])
    parser.add_argument("--log-dir", default="logs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    interval = REFERENCE_INTERVAL[args.task]
    if "reference" in args.variants and args.task != "dyck":
        parser.error("the 'reference' variant is Dyck's; for SCAN's padded reference step run benchmarks/scan_step.py")
    runners = {
        "reference": lambda: plain_step_seconds(args.task, args.steps, args.warmup, reference=True),
        "plain": lambda: plain_step_seconds(args.task, args.steps, args.warmup),
        "lightning": lambda: lightning_step_seconds(args.task, args.steps, args.warmup, [], args.log_dir),
        "edge_reference": lambda: lightning_step_seconds(args.task, args.steps, args.warmup, edge_callbacks(interval), args.log_dir),
        "edge_every_step": lambda: lightning_step_seconds(args.task, args.steps, args.warmup, edge_callbacks(1), args.log_dir),
    }
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    for r in range(args.rounds):
        for variant in args.variants:
            times[variant].append(runners[variant]())
        print(f"round {r + 1}: " + ", ".join(f"{v} {times[v][-1] * 1e3:.1f} ms/step" for v in args.variants), flush=True)
    median = {v: statistics.median(t) for v, t in times.items()}
    print(f"\n{args.task}: {args.steps} steps x {args.rounds} rounds, torch threads {torch.get_num_threads()}")
    for v in args.variants:
        print(f"  {v:>16}: {median[v] * 1e3:8.2f} ms/step (median)")
    if "reference" in median and "plain" in median:
        print(f"  plain / reference                   = {median['plain'] / median['reference']:.3f}  (time per step)")
    if "plain" in median and "lightning" in median:
        print(f"  speed ratio lightning / plain       = {median['plain'] / median['lightning']:.3f}  (target >= 0.95)")
    for v, label, target in (("edge_reference", f"interval {interval}", 3), ("edge_every_step", "interval 1", 10)):
        if v in median and "lightning" in median:
            overhead = 100 * (median[v] / median["lightning"] - 1)
            print(f"  callbacks overhead at {label:>12} = {overhead:+.1f} %  (target <= {target} %)")


if __name__ == "__main__":
    main()
