"""Where the #11 speed targets' work goes, profiled: the share of each piece of work that is matrix products.

    python benchmarks/floors.py --threads 1

For the SCAN training step (fp32 and bf16-mixed, length-sorted chunks, AdamW), the teacher-forced SCAN
evaluation (2548 pairs), 100 Dyck training steps (one evaluation interval: forward, backward, clipping, AdamW),
one Dyck validation (5000 test + 50 training rows: the distinct rows in length-sorted chunks, with the positions it
evaluates against the padded batches' — at an equal rate per position their ratio is the time ratio's floor), and
one analysis evaluation of the Dyck test set on its prefix trees, it prints the wall time per unit of work, the
matmul kernels' time (``torch.profiler`` self time of mm / addmm / bmm / baddbmm / _addmm_activation, and their
GFLOP), and the largest other kinds of work. The matmuls are what no reorganisation of the same computation in the
same precision removes: a target below them cannot be met by this code path. The weights do not matter (untrained
models: same shapes, same FLOPs); the data are the shipped sets. The other kinds' shares are the profiler's; the
Dyck analysis evaluation is also timed call by call, its pieces wrapped in timers.

    python benchmarks/floors.py --threads 1 --work dyck_analysis   # one unit of work only
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, not an editable install's

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"}
KINDS = {  # the other work, by kind
    "casts and copies": {"aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"},
    "gathers": {"aten::index_select", "aten::index", "aten::embedding", "aten::cat", "aten::gather"},
    "softmax and attention kernels": {"aten::_softmax", "aten::_softmax_backward_data", "aten::_log_softmax",
                                      "aten::_masked_softmax", "aten::_transform_bias_rescale_qkv",
                                      "aten::_scaled_dot_product_flash_attention_for_cpu",
                                      "aten::_scaled_dot_product_flash_attention_for_cpu_backward"},
    "layer norms": {"aten::native_layer_norm", "aten::native_layer_norm_backward"},
}
DYCK_EVAL_EVERY = 100  # configs/dyck.yaml's training steps per evaluation


def profiled(work, repeats: int) -> tuple[float, dict[str, float], float, dict[str, list[tuple[str, float]]]]:
    """(median wall seconds of ``work`` unprofiled, {kind: self seconds per call} profiled, matmul GFLOP per call,
    {kind: its three largest ops with their seconds}). The times come from a profile without shapes or FLOP counts
    (recording them triples the self time of a Dyck step's small ops), the FLOPs from one more call counted."""
    work()  # warm-up
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        walls.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            work()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as counted:
        work()
    seconds, ops = defaultdict(float), defaultdict(list)
    for event in prof.key_averages():
        kind = "matmuls" if event.key in MATMULS else next((k for k, names in KINDS.items() if event.key in names), "other")
        seconds[kind] += event.self_cpu_time_total / 1e6 / repeats
        ops[kind].append((event.key.removeprefix("aten::"), event.self_cpu_time_total / 1e6 / repeats))
    flops = sum(event.flops for event in counted.key_averages() if event.key in MATMULS)
    largest = {kind: sorted(found, key=lambda op: -op[1])[:3] for kind, found in ops.items()}
    return statistics.median(walls), dict(seconds), flops / 1e9, largest


def report(title: str, wall: float, seconds: dict[str, float], gflop: float, largest: dict[str, list[tuple[str, float]]]) -> None:
    profiled_total = sum(seconds.values())
    mm = seconds.get("matmuls", 0.0)
    print(f"\n{title}: {wall:.3f} s per unit (unprofiled median); profiled self time {profiled_total:.3f} s")
    print(f"  matmuls {mm:.3f} s ({100 * mm / profiled_total:.0f} %), {gflop:.2f} GFLOP at {gflop / mm:.0f} GFLOP/s"
          f" -> the floor at this rate: {wall * mm / profiled_total:.3f} s of the {wall:.3f} s")
    for kind, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        if kind != "matmuls":
            top = ", ".join(f"{op} {t:.3f}" for op, t in largest[kind])
            print(f"  {kind:30s} {s:.3f} s ({100 * s / profiled_total:.0f} %): {top}")


def descend(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimizer step on ``loss`` as the configs train: backward, gradients clipped to norm 1.0, AdamW."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def scan_step(bf16: bool, repeats: int) -> None:
    from lit_grok.data.scan import ScanDataModule
    from lit_grok.models.common import cpu_emulates
    from lit_grok.models.scan import ScanTransformer

    if bf16 and cpu_emulates("bf16-mixed"):  # minutes of emulated matmuls, and not what a bf16 CPU would show
        print("\nSCAN training step, bf16-mixed: skipped, this CPU has no bf16 matmul kernels (AVX-512 or AMX)")
        return
    torch.manual_seed(2024)
    model, dm = ScanTransformer(), ScanDataModule()
    opt, stream = model.configure_optimizers(), iter(dm.train_dataloader())
    batches = [next(stream) for _ in range(2 * repeats + 2)]

    def one_step() -> None:
        batch = batches.pop()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = model.length_sorted_loss(*batch)
        descend(model, opt, loss)

    name = "bf16-mixed (configs/scan_bf16.yaml)" if bf16 else "fp32"
    report(f"SCAN training step, {name}, batch {dm.batch_size}", *profiled(one_step, repeats))


def scan_evaluation(repeats: int) -> None:
    from lit_grok.data.scan import ScanDataModule
    from lit_grok.models.scan import EVAL_CHUNK, EVAL_SETS, ScanTransformer

    torch.manual_seed(2024)
    model, dm = ScanTransformer().eval(), ScanDataModule()
    batches = [batch for loader in dm.val_dataloader() for batch in loader]

    @torch.no_grad()
    def teacher_forced() -> None:
        for batch in batches:
            model.packed_logits(*batch, EVAL_CHUNK)

    pairs = sum(len(b[0]) for b in batches)
    report(f"SCAN teacher-forced evaluation, {pairs} pairs ({' + '.join(EVAL_SETS)})", *profiled(teacher_forced, repeats))


def dyck_training(repeats: int) -> None:
    from lit_grok.data.dyck import DyckDataModule
    from lit_grok.models.common import masked_cross_entropy
    from lit_grok.models.dyck import DyckTransformer

    torch.manual_seed(42)
    model, dm = DyckTransformer(), DyckDataModule()
    opt, stream = model.configure_optimizers(), iter(dm.train_dataloader())

    def interval() -> None:  # what configs/dyck.yaml runs between two evaluations
        for _ in range(DYCK_EVAL_EVERY):
            x, y = next(stream)
            descend(model, opt, masked_cross_entropy(model(x), y))

    report(f"Dyck training, {DYCK_EVAL_EVERY} steps of batch {dm.hparams.batch_size}", *profiled(interval, repeats))


def dyck_validation(repeats: int) -> None:
    from lit_grok.data.dyck import DyckDataModule
    from lit_grok.models.common import TokenMetrics, length_sorted_chunks
    from lit_grok.models.dyck import EVAL_CHUNK, DyckTransformer

    torch.manual_seed(42)
    model, dm = DyckTransformer().eval(), DyckDataModule()
    loaders = [list(loader) for loader in dm.val_dataloader()]  # batches (x, y, copies of each row's first occurrence)

    @torch.no_grad()
    def validation() -> None:  # DyckTransformer.validation_step's work on every batch of both loaders
        for batches in loaders:
            metrics = TokenMetrics()
            for x, y, copies in batches:
                model.update_distinct(metrics, x, y, copies)

    batches = [batch for batches in loaders for batch in batches]
    chunked = sum(len(rows) * T for _, y, copies in batches
                  for rows, T in length_sorted_chunks(y, EVAL_CHUNK, (copies > 0).nonzero().squeeze(1)))
    padded = sum(x.numel() for x, _, _ in batches)
    n_rows = sum(len(x) for x, _, _ in batches)
    report(f"Dyck validation, {n_rows} rows in {len(batches)} batches", *profiled(validation, repeats))
    print(f"  positions evaluated: {chunked} (distinct rows, length-sorted chunks) against {padded} (every row padded):"
          f" {chunked / padded:.3f}x, the floor of the time ratio at an equal rate per position")


def dyck_analysis_evaluation(repeats: int) -> None:
    from callbacks.utils.evaluation import evaluate, evaluation_set
    from lit_grok.data.dyck import DyckDataModule
    from lit_grok.models.dyck import DyckTransformer

    torch.manual_seed(42)
    model, dm = DyckTransformer().eval(), DyckDataModule()
    data = evaluation_set(model, [batch[:2] for batch in dm.val_dataloader()[0]])
    nodes = sum(len(tree.tokens) for tree in data.batches)
    work = lambda: evaluate(model, data, keep_outputs=True)  # noqa: E731
    report(f"Dyck analysis evaluation of the 5000 test rows ({nodes} prefix-tree nodes, keep_outputs)", *profiled(work, repeats))
    wall, pieces = timed_calls(work, repeats)
    print(f"  timed call by call, unprofiled: {1e3 * wall:.1f} ms per evaluation: "
          + ", ".join(f"{name} {1e3 * s:.1f}" for name, s in pieces.items()) + f", the rest {1e3 * (wall - sum(pieces.values())):.1f}")


def timed_calls(work, repeats: int) -> tuple[float, dict[str, float]]:
    """(mean wall seconds of ``work``, {piece: seconds per call}, both over the same calls) with each of the prefix-tree forward's pieces wrapped in
    a timer instead of profiled (the profiler inflates small memory-bound ops such as the gathers): the linear layers,
    the per-chunk attention, the q / k / v and output gathers, the layer norms; the rest is GELU, adds and counting."""
    import lit_grok.models.prefix as prefix

    pieces = {"linear layers": (F, "linear"), "attention (attend)": (prefix, "attend"),
              "gathers (index_select)": (torch.Tensor, "index_select"), "layer norms": (F, "layer_norm")}
    seconds = dict.fromkeys(pieces, 0.0)

    def timer(name, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - start
        return timed

    originals = {name: getattr(owner, attr) for name, (owner, attr) in pieces.items()}
    try:
        for name, (owner, attr) in pieces.items():
            setattr(owner, attr, timer(name, originals[name]))
        work()  # warm-up
        seconds.update(dict.fromkeys(pieces, 0.0))
        walls = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            walls.append(time.perf_counter() - start)
    finally:
        for name, (owner, attr) in pieces.items():
            setattr(owner, attr, originals[name])
    return sum(walls) / repeats, {name: s / repeats for name, s in seconds.items()}  # means: "the rest" = wall - pieces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed and profiled repeats of each unit of work")
    parser.add_argument("--work", nargs="+", choices=["scan_step", "scan_evaluation", "dyck_training", "dyck_validation", "dyck_analysis"],
                        help="only these units of work (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU {torch.backends.cpu.get_cpu_capability()}")
    works = {"scan_step": lambda: (scan_step(False, args.repeats), scan_step(True, args.repeats)),
             "scan_evaluation": lambda: scan_evaluation(args.repeats),
             "dyck_training": lambda: dyck_training(args.repeats),
             "dyck_validation": lambda: dyck_validation(args.repeats),
             "dyck_analysis": lambda: dyck_analysis_evaluation(args.repeats)}
    for name in args.work or works:
        works[name]()


if __name__ == "__main__":
    main()
