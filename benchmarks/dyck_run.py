"""A whole Dyck run, end to end: ``lit-grok fit --config configs/dyck.yaml`` against the reference's protocol in plain PyTorch.

Every variant is its own process (imports, data and model construction included), and the variants alternate inside
every round, so machine drift hits all of them alike; the ratios of median wall times are printed at the end.

- ``lit_grok``: the CLI on ``configs/dyck.yaml`` (edge callbacks, evaluation every 100 steps, checkpoints).
- ``reference_loop``: what the reference's lifecycle script does (docs/methods.md, run families): the same training
  steps through nn.TransformerEncoder's own forward, every 100 steps the metrics of the full test (5000) and training
  (50) sets in padded batches of 512, and a full ``state_dict`` snapshot (kept, written to disk at the end) — the
  offline decomposition not counted.
- ``train_only``: lit-grok's training steps alone (its forward, bit-equal to nn.TransformerEncoder's with autograd),
  the floor of ``lit_grok``.
- ``previous``: the CLI of another checkout (``--previous DIR``, e.g. a worktree of the commit before a change);
  with it, the runs' logged scalars are compared tag by tag.

    python benchmarks/dyck_run.py --steps 10000 --rounds 1
    python benchmarks/dyck_run.py --steps 2000 --rounds 2 --previous /tmp/lit-grok-before --variants lit_grok previous
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EVAL_EVERY = 100  # the reference's metric and snapshot cadence (Dyck lifecycle retrain)
EVAL_BATCH = 512


def plain_run(steps: int, evaluate: bool, out_dir: Path) -> None:
    """The reference's training loop (seed 42, AdamW lr 1e-3, ω = 1, clip 1.0); with ``evaluate`` its metrics and
    state_dict snapshots every EVAL_EVERY steps (+ step 0), the snapshots saved at the end."""
    import torch
    import torch.nn.functional as F

    from lit_grok.data.common import IGNORE
    from lit_grok.data.dyck import DyckDataModule
    from lit_grok.models.dyck import DyckTransformer

    torch.manual_seed(42)
    model, dm = DyckTransformer(lr=1e-3, weight_decay=1.0), DyckDataModule()
    opt = model.configure_optimizers()  # the reference's AdamW
    forward = model.encoder_forward if evaluate else model  # else lit-grok's training steps without Lightning
    batches = iter(dm.train_dataloader())

    @torch.no_grad()
    def metrics(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        loss_sum, hits, tokens = 0.0, 0, 0
        for xb, yb in zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH)):
            logits = forward(xb)  # [B, T, C], every padded position
            mask = yb != IGNORE
            loss_sum += F.cross_entropy(logits[mask], yb[mask], reduction="sum").item()
            hits += int((logits.argmax(-1)[mask] == yb[mask]).sum())
            tokens += int(mask.sum())
        return loss_sum / tokens, hits / tokens

    snapshots, history = [{k: v.clone() for k, v in model.state_dict().items()}], []
    for step in range(1, steps + 1):
        x, y = next(batches)
        loss = F.cross_entropy(forward(x).reshape(-1, dm.n_classes), y.reshape(-1), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if evaluate and step % EVAL_EVERY == 0:
            model.eval()
            history.append((step, *metrics(dm.x_test, dm.y_test), *metrics(dm.x_train, dm.y_train)))
            model.train()
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    if evaluate:
        torch.save({"snapshots": snapshots, "history": history}, out_dir / "reference_run.pt")


def command(variant: str, steps: int, out_dir: Path, previous: Path | None) -> tuple[list[str], Path]:
    """The process a variant runs, and the folder it runs in."""
    if variant in ("reference_loop", "train_only"):
        return [sys.executable, str(Path(__file__).resolve()), "--plain", variant, "--steps", str(steps),
                "--out", str(out_dir)], REPO
    cli = ["fit", "--config", "configs/dyck.yaml", "--trainer.max_steps", str(steps),
           "--trainer.logger.init_args.save_dir", str(out_dir), "--trainer.enable_progress_bar", "false"]
    if variant == "lit_grok":
        return [sys.executable, "-c", "from lit_grok.cli import main; main()", *cli], REPO
    return [sys.executable, "-c", "import sys; sys.path.insert(0, '.'); from lit_grok.cli import main; main()", *cli], previous


def compare_scalars(new_dir: Path, old_dir: Path) -> None:
    """Per common tag: whether the two runs logged the same steps and the largest relative difference of the values."""
    from lit_grok.report import read_scalars

    new, old = (read_scalars(next(d.glob("dyck/version_*"))) for d in (new_dir, old_dir))
    common = sorted(set(new) & set(old))
    print(f"\nlogged scalars, lit_grok vs previous: {len(common)} common tags "
          f"({len(set(new) - set(old))} only in lit_grok, {len(set(old) - set(new))} only in previous)")
    for tag in common:
        (s_new, v_new), (s_old, v_old) = new[tag], old[tag]
        if not np.array_equal(s_new, s_old):
            print(f"  {tag:>28}: different steps ({len(s_new)} vs {len(s_old)} values)")
            continue
        scale = np.maximum(np.abs(v_old), 1e-30)
        both_nan = np.isnan(v_new) & np.isnan(v_old)
        rel = np.where(both_nan, 0.0, np.abs(v_new - v_old) / scale)
        equal = int((v_new == v_old).sum() + both_nan.sum())
        print(f"  {tag:>28}: {equal}/{len(v_new)} bit-equal, largest relative difference {np.nanmax(rel):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["lit_grok", "reference_loop", "train_only"],
                        choices=["lit_grok", "reference_loop", "train_only", "previous"])
    parser.add_argument("--previous", type=Path, help="a checkout of earlier lit-grok code (the 'previous' variant)")
    parser.add_argument("--plain", choices=["reference_loop", "train_only"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:  # one variant's own process
        import torch

        torch.set_num_threads(1)  # what configs/dyck.yaml's threads: 1 sets for the CLI
        plain_run(args.steps, args.plain == "reference_loop", args.out)
        return
    if "previous" in args.variants and (args.previous is None or not (args.previous / "lit_grok").is_dir()):
        parser.error("the 'previous' variant needs --previous DIR, a checkout holding lit_grok/ (git worktree add DIR COMMIT)")

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for variant in args.variants:
                out_dir = Path(tmp) / f"{variant}_{r}"
                out_dir.mkdir()
                cmd, cwd = command(variant, args.steps, out_dir, args.previous)
                start = time.perf_counter()
                done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
                times[variant].append(time.perf_counter() - start)
                if done.returncode:
                    sys.exit(f"{variant} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
            print(f"round {r + 1}: " + ", ".join(f"{v} {times[v][-1]:.1f} s" for v in args.variants), flush=True)
        median = {v: statistics.median(t) for v, t in times.items()}
        print(f"\nDyck, {args.steps} steps, 1 torch thread, median of {args.rounds} round(s), wall time per run:")
        for v in args.variants:
            print(f"  {v:>15}: {median[v]:8.1f} s  ({median[v] / args.steps * 1e3:.1f} ms per step)")
        for a, b in (("lit_grok", "reference_loop"), ("lit_grok", "previous"), ("train_only", "reference_loop"),
                     ("lit_grok", "train_only")):
            if a in median and b in median:
                print(f"  {a} / {b} = {median[a] / median[b]:.3f}")
        if "lit_grok" in median and "previous" in median:
            compare_scalars(Path(tmp) / "lit_grok_0", Path(tmp) / "previous_0")


if __name__ == "__main__":
    main()
