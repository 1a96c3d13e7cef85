"""What UpdateRecorder + GramSpectrum + EdgeDecomposer add to a training step, on Lightning's demo Transformer.

The demo ``Transformer`` (14.6 M parameters, vocabulary 33278) trains on random token batches with AdamW
(weight_decay 0.1), the step driven as Lightning's automatic optimization drives it (``optimizer.step(closure)``,
the closure running forward, zero_grad and backward). Variants: the plain step, and the step with the three
callbacks (window 5) on the attention matrices (``attn_weights``, 0.96 M) or all parameters, at interval 1 and
100. Every variant keeps its own model and optimizer and they alternate in rounds (the VM is shared: machine
noise hits all alike), 1 torch thread. Times are CPU time of this process per step (``time.process_time``: on
a VM shared with other jobs, wall time mostly measures waiting). At interval 100 a row completes once per 100
steps; when fewer steps than that are timed, its ms/step is estimated as the mean recording-only step plus
1/100 of what a row adds (the interval-1 step of the same selection minus that recording-only step), marked "est.".
Extra memory is the bytes of every tensor the recorder, its Gram window and the analyses hold (unique storages),
in copies of the selection.

    python benchmarks/recorder_overhead.py                       # 3 rounds x 5 steps (a few minutes)
    python benchmarks/recorder_overhead.py --rounds 4 --steps 50  # 200 steps: interval 100 measured, not estimated
"""
from __future__ import annotations

import argparse
import time

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.demos import Transformer
from torch import Tensor

from callbacks import EdgeDecomposer, GramSpectrum, UpdateRecorder
from callbacks.utils.row_analysis import GramWindow

VOCAB = 33278


class DemoLM(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = Transformer(vocab_size=VOCAB)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, target = batch
        return F.nll_loss(self.model(inputs, target), target.reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.1)


def _tensors_bytes(objects: list) -> int:
    """Bytes of the distinct storages of every tensor held (directly, or in lists / dicts) by ``objects``."""
    seen: dict[int, int] = {}

    def visit(x, depth=0):
        if isinstance(x, torch.nn.Parameter):
            return  # the model's own
        if isinstance(x, Tensor):
            storage = x.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif depth < 3 and isinstance(x, (list, tuple)):
            for y in x:
                visit(y, depth + 1)
        elif depth < 3 and isinstance(x, dict):
            for y in x.values():
                visit(y, depth + 1)
        elif depth < 3 and hasattr(x, "__dict__") and not isinstance(x, (torch.nn.Module, type)):
            for y in vars(x).values():
                visit(y, depth + 1)

    for obj in objects:
        for value in vars(obj).values():
            if not isinstance(value, (torch.nn.Module, torch.optim.Optimizer)):
                visit(value)
    return sum(seen.values())


class Variant:
    def __init__(self, name: str, params, interval: int, batch: int, seq: int) -> None:
        self.name, self.interval = name, interval
        self.times: list[tuple[float, bool]] = []  # (CPU seconds, a row completed) per timed step
        self.rounds: list[float] = []  # mean CPU seconds per step of each round
        self.module = DemoLM()
        self.opt = self.module.configure_optimizers()
        self.batch, self.seq = batch, seq
        self.gen = torch.Generator().manual_seed(1)
        self.recorder = self.analyses = None
        self.params = [p for p in self.module.parameters()]
        if params is not None:
            self.recorder = UpdateRecorder(params=params, interval=interval, window=5)
            self.recorder.attach(self.module, [self.opt])
            self.analyses = [GramSpectrum(top_k=5), EdgeDecomposer(top_k=5)]
            for a in self.analyses:
                a.bind(self.recorder)

    def step(self) -> None:
        inputs = torch.randint(0, VOCAB, (self.batch, self.seq), generator=self.gen)
        target = torch.randint(0, VOCAB, (self.batch, self.seq), generator=self.gen)

        def closure() -> Tensor:
            loss = self.module.training_step((inputs, target), 0)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            return loss

        self.opt.step(closure)
        if self.analyses is not None:
            for a in self.analyses:
                a.publish()  # what on_train_batch_end does (no trainer: nothing logged)

    def run(self, steps: int) -> None:
        """Time ``steps`` steps (one round of this variant)."""
        for _ in range(steps):
            rows = self.recorder.rows_done if self.recorder is not None else 0
            start = time.process_time()
            self.step()
            self.times.append((time.process_time() - start, self.recorder is not None and self.recorder.rows_done > rows))
        self.rounds.append(sum(t for t, _ in self.times[-steps:]) / steps)

    def mean(self, rows: bool | None = None) -> float:
        picked = [t for t, r in self.times if rows is None or r == rows]
        return sum(picked) / len(picked) if picked else float("nan")

    def per_step(self, every_step: "Variant | None") -> tuple[float, bool]:
        """(CPU seconds per step, estimated?)."""
        if self.interval == 1 or len(self.times) >= self.interval or every_step is None:
            return self.mean(), False
        recording = self.mean(rows=False)
        return recording + (every_step.mean() - recording) / self.interval, True

    def extra_copies(self) -> float:
        if self.recorder is None:
            return 0.0
        held = [self.recorder, GramWindow.of(self.recorder), *self.analyses]
        return _tensors_bytes(held) / (self.recorder.selection.numel * 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before the rounds")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = [
        Variant("plain", None, 1, args.batch, args.seq),
        Variant("attention, interval 1", "attn_weights", 1, args.batch, args.seq),
        Variant("attention, interval 100", "attn_weights", 100, args.batch, args.seq),
        Variant("all, interval 1", "all", 1, args.batch, args.seq),
        Variant("all, interval 100", "all", 100, args.batch, args.seq),
    ]
    for v in variants:
        for _ in range(args.warmup):
            v.step()
    for r in range(args.rounds):
        for v in variants:
            v.run(args.steps)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v.name} {1e3 * v.mean():.1f}" for v in variants), flush=True)
    every_step = {v.name.split(",")[0]: v for v in variants if v.interval == 1 and v.recorder is not None}
    plain = variants[0].mean()
    print(f"\ndemo Transformer ({sum(p.numel() for p in variants[0].params) / 1e6:.2f} M params), batch "
          f"{args.batch} x {args.seq} tokens, AdamW(weight_decay=0.1), window 5, {args.rounds} rounds x {args.steps} "
          f"steps, torch threads {torch.get_num_threads()}, CPU time per step\n")
    print("| variant | selection | CPU ms/step | vs plain | vs plain, range over rounds | extra memory (copies of the selection) |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        seconds, estimated = v.per_step(every_step.get(v.name.split(",")[0]))
        sel = f"{v.recorder.selection.numel / 1e6:.2f} M" if v.recorder is not None else "-"
        mem = f"{v.extra_copies():.2f}" if v.recorder is not None else "-"
        est = " (est.)" if estimated else ""
        spread = "-"
        if not estimated and v.recorder is not None:  # the same round's plain steps as reference
            ratios = [100 * (mine / base - 1) for mine, base in zip(v.rounds, variants[0].rounds)]
            spread = f"{min(ratios):+.1f} .. {max(ratios):+.1f} %"
        print(f"| {v.name} | {sel} | {1e3 * seconds:.1f}{est} | {100 * (seconds / plain - 1):+.1f} %{est} | {spread} | {mem} |")


if __name__ == "__main__":
    main()
