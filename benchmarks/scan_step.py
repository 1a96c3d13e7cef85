"""SCAN training step (forward, backward, clipping, AdamW), padded batch against length-sorted chunks,
in fp32 and bf16-mixed (CPU autocast, as Lightning's ``precision: bf16-mixed``), variants alternating.

    python benchmarks/scan_step.py --threads 1
    python benchmarks/scan_step.py --threads 1 --variants old_fp32 new_fp32 new_bf16_math

Under CPU autocast the model runs its attention as explicit products (``lit_grok.models.scan.attention``);
``new_bf16_math`` is the previous bf16 path for comparison: the same packed step with the encoder through its
modules and every attention on SDPA's math kernel (which copies bf16 inputs to fp32 and back). Every variant trains its own copy of the seed-2024 model on the
same batches of the training stream; medians of the per-step times are printed, with ratios to old_fp32.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, not an editable install's

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import lit_grok  # noqa: E402
import lit_grok.models.scan as scan_model  # noqa: E402
from lit_grok.data.scan import ScanDataModule  # noqa: E402
from lit_grok.models.common import cpu_emulates, masked_cross_entropy  # noqa: E402
from lit_grok.models.scan import ScanTransformer  # noqa: E402

VARIANTS = {  # name: (length-sorted loss, bf16 autocast, the previous bf16 path: math attention kernel)
    "old_fp32": (False, False, False),
    "new_fp32": (True, False, False),
    "old_bf16": (False, True, False),
    "new_bf16": (True, True, False),
    "new_bf16_math": (True, True, True),
}


def step(model: ScanTransformer, opt: torch.optim.Optimizer, batch, sorted_loss: bool, bf16: bool, math: bool) -> float:
    src, tgt_in, tgt_out = batch
    with ExitStack() as stack:
        if bf16:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        if math:
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            stack.enter_context(previous_bf16_path(model))
        loss = model.length_sorted_loss(*batch) if sorted_loss else masked_cross_entropy(model(src, tgt_in), tgt_out)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


@contextmanager
def previous_bf16_path(model: ScanTransformer):
    """The packed step as it was before explicit bf16 attention: encoder modules, attention by SDPA."""
    attention, model.packed_encode = scan_model.attention, model.encode
    scan_model.attention = lambda q, k, v, keep=None, causal=False: F.scaled_dot_product_attention(q, k, v, keep, is_causal=causal)
    try:
        yield
    finally:
        scan_model.attention = attention
        del model.packed_encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["old_fp32", "new_fp32", "new_bf16", "new_bf16_math"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(2024)
    base, dm = ScanTransformer(), ScanDataModule()
    stream = iter(dm.train_dataloader())
    batches = [next(stream) for _ in range(args.steps * args.rounds + 1)]
    models = {v: copy.deepcopy(base) for v in args.variants}
    opts = {v: m.configure_optimizers() for v, m in models.items()}
    for v in args.variants:  # warm-up step on the spare batch
        step(models[v], opts[v], batches[-1], *VARIANTS[v])
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    for r in range(args.rounds):
        for v in args.variants:
            for batch in batches[r * args.steps:(r + 1) * args.steps]:
                start = time.perf_counter()
                step(models[v], opts[v], batch, *VARIANTS[v])
                times[v].append(time.perf_counter() - start)
        print(f"round {r + 1}: " + ", ".join(f"{v} {statistics.median(times[v][-args.steps:]):.3f} s" for v in args.variants), flush=True)
    median = {v: statistics.median(t) for v, t in times.items()}
    print(f"\nSCAN training step, batch {dm.batch_size}, torch threads {torch.get_num_threads()}, "
          f"{args.steps} steps x {args.rounds} rounds, lit_grok from {Path(lit_grok.__file__).parent}")
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, bf16 matmuls "
          f"{'emulated (no AVX-512 or AMX kernels)' if cpu_emulates('bf16-mixed') else 'on oneDNN kernels'}")
    ref = median.get("old_fp32")
    for v in args.variants:
        ratio = f"   / old_fp32 = {median[v] / ref:.3f}" if ref else ""
        print(f"  {v:>14}: {median[v]:.3f} s/step (median){ratio}")


if __name__ == "__main__":
    main()
