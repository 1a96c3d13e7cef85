"""What UpdateRecorder + GramSpectrum + EdgeDecomposer add to a training step, on Lightning's demo Transformer.

The demo ``Transformer`` (14.6 M parameters, vocabulary 33278) trains on random token batches with AdamW
(weight_decay 0.1), the step driven as Lightning's automatic optimization drives it (``optimizer.step(closure)``,
the closure running forward, zero_grad and backward). Variants: the plain step, and the step with the three
callbacks (window 5) on the attention matrices (``attn_weights``, 0.96 M) or all parameters, at interval 1 and 100.

The variants share one model and optimizer, so the training step runs on the same memory in all of them (separate
copies of the model differed by up to 20 %); a variant's recorder is attached for its own rounds only (``attach``
keeps its buffers). Every round of a variant lies between two rounds of the plain step and is compared with their
mean, and each pass over the variants starts one variant later, so machine noise and cache effects hit all alike.
Times are CPU time of this process per step (``time.process_time``; wall time on a shared VM mostly measures
waiting), 1 torch thread. At interval 100 a row completes once per 100 steps; when fewer steps than that are
timed, its ms/step is estimated as the mean recording-only step plus 1/100 of what a row adds (the interval-1 step
of the same selection minus that recording-only step), marked "est.". "In the recorder's code" is the CPU time
inside the recorder's hooks and the analyses' ``publish`` alone (their own work, without its effect on the caches
of the training step around it), against the plain step. Extra memory is the bytes of every tensor the recorder,
its Gram window and the analyses hold (unique storages), in copies of the selection.

    python benchmarks/recorder_overhead.py                       # 3 rounds x 5 steps (about a minute)
    python benchmarks/recorder_overhead.py --rounds 5 --steps 20  # 100 steps a variant: interval 100 measured (5 minutes)
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
    def __init__(self, name: str, module: DemoLM, opt: torch.optim.Optimizer, params, interval: int, batch: int, seq: int) -> None:
        self.name, self.interval = name, interval
        self.times: list[tuple[float, bool]] = []  # (CPU seconds, a row completed) per timed step
        self.inside: list[float] = []  # CPU seconds of each timed step spent in the recorder's and analyses' own code
        self._inside = 0.0
        self.rounds: list[float] = []  # mean CPU seconds per step of each round
        self.module, self.opt = module, opt
        self.batch, self.seq = batch, seq
        self.gen = torch.Generator().manual_seed(1)
        self.recorder = self.analyses = None
        if params is not None:
            self.recorder = UpdateRecorder(params=params, interval=interval, window=5)
            self.recorder.attach(self.module, [self.opt])
            self.analyses = [GramSpectrum(top_k=5), EdgeDecomposer(top_k=5)]
            for a in self.analyses:
                a.bind(self.recorder)
            self.recorder.detach()
            for owner, name in [(self.recorder, "_capture"), (self.recorder, "_post_step"), *((a, "publish") for a in self.analyses)]:
                setattr(owner, name, self._clocked(getattr(owner, name)))  # attach() hooks the clocked _post_step

    def _clocked(self, fn):
        def clocked(*args, **kwargs):
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self._inside += time.process_time() - start
        return clocked

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

    def run(self, steps: int, warmup: int = 0) -> None:
        """Attach this variant's recorder, take ``warmup`` untimed steps, time ``steps`` steps (one round), detach."""
        if self.recorder is not None:
            self.recorder.attach(self.module, [self.opt])
        for _ in range(warmup):
            self.step()
        if steps:
            self._timed(steps)
        if self.recorder is not None:
            self.recorder.detach()

    def _timed(self, steps: int) -> None:
        for _ in range(steps):
            rows = self.recorder.rows_done if self.recorder is not None else 0
            self._inside = 0.0
            start = time.process_time()
            self.step()
            self.times.append((time.process_time() - start, self.recorder is not None and self.recorder.rows_done > rows))
            self.inside.append(self._inside)
        self.rounds.append(sum(t for t, _ in self.times[-steps:]) / steps)

    def mean(self, rows: bool | None = None, inside: bool = False) -> float:
        """Mean CPU seconds per timed step (of the steps that completed a row or did not, if ``rows`` says which);
        ``inside``: only the time in the recorder's and analyses' code."""
        seconds = self.inside if inside else [t for t, _ in self.times]
        picked = [t for t, (_, row) in zip(seconds, self.times) if rows is None or row == rows]
        return sum(picked) / len(picked) if picked else float("nan")

    def per_step(self, every_step: "Variant | None", inside: bool = False) -> tuple[float, bool]:
        """(CPU seconds per step, estimated?)."""
        if self.interval == 1 or len(self.times) >= self.interval or every_step is None:
            return self.mean(inside=inside), False
        recording = self.mean(rows=False, inside=inside)
        return recording + (every_step.mean(inside=inside) - recording) / self.interval, True

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
    module = DemoLM()
    opt = module.configure_optimizers()
    variants = [
        Variant(name, module, opt, params, interval, args.batch, args.seq)
        for name, params, interval in [("plain", None, 1), ("attention, interval 1", "attn_weights", 1),
                                       ("attention, interval 100", "attn_weights", 100), ("all, interval 1", "all", 1),
                                       ("all, interval 100", "all", 100)]
    ]
    for v in variants:
        v.run(0, warmup=args.warmup)
    plain, others = variants[0], variants[1:]
    brackets: dict[str, list[int]] = {v.name: [] for v in others}  # per round of v: the plain round just before it
    plain.run(args.steps, warmup=1)
    for r in range(args.rounds):
        for v in others[r % len(others):] + others[: r % len(others)]:  # each round starts one variant later
            v.run(args.steps, warmup=1)
            brackets[v.name].append(len(plain.rounds) - 1)
            plain.run(args.steps, warmup=1)  # every round of a variant lies between two plain rounds
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v.name} {1e3 * v.mean():.1f}" for v in variants), flush=True)
    every_step = {v.name.split(",")[0]: v for v in others if v.interval == 1}
    print(f"\ndemo Transformer ({sum(p.numel() for p in module.parameters()) / 1e6:.2f} M params), batch "
          f"{args.batch} x {args.seq} tokens, AdamW(weight_decay=0.1), window 5, {args.rounds} rounds x {args.steps} "
          f"steps, torch threads {torch.get_num_threads()}, CPU time per step; a variant against the mean of the plain "
          f"rounds just before and after each of its rounds\n")
    print("| variant | selection | CPU ms/step | vs plain | vs plain, range over rounds | in the recorder's code | "
          "extra memory (copies of the selection) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| plain | - | {1e3 * plain.mean():.1f} | +0.0 % | - | - | - |")
    for v in others:
        seconds, estimated = v.per_step(every_step.get(v.name.split(",")[0]))
        refs = [(plain.rounds[b] + plain.rounds[b + 1]) / 2 for b in brackets[v.name]]  # [rounds] seconds
        est = " (est.)" if estimated else ""
        spread = "-"
        if not estimated:
            ratios = [100 * (mine / ref - 1) for mine, ref in zip(v.rounds, refs)]
            spread = f"{min(ratios):+.1f} .. {max(ratios):+.1f} %"
        own, _ = v.per_step(every_step.get(v.name.split(",")[0]), inside=True)
        print(f"| {v.name} | {v.recorder.selection.numel / 1e6:.2f} M | {1e3 * seconds:.1f}{est} | "
              f"{100 * (seconds / (sum(refs) / len(refs)) - 1):+.1f} %{est} | {spread} | "
              f"{1e3 * own:.1f} ms ({100 * own / plain.mean():.1f} %){est} | {v.extra_copies():.2f} |")


if __name__ == "__main__":
    main()
