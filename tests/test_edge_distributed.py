"""Two gloo CPU processes: DDP (replicated θ) and a parameter vector sharded in halves give the
single-process rows, spectra and grad% — the sharded case through one all-reduce of w×w products.

The workers are spawned, never forked (a fork after torch's thread pools exist can deadlock), and a
deadline kills them instead of letting a hung worker stall the run: a first hang is retried once on a
fresh port (with a warning), a second fails the test. Gloo is pinned to the loopback interface: left
alone it resolves the host name, which can stall on a machine whose DNS is cut off. A worker still
running halfway to the deadline prints its stacks (shown with the test's output if it fails)."""
import faulthandler
import os
import socket
import time
import warnings
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from callbacks import EdgeDecomposer, GramSpectrum, UpdateRecorder
from oracle import ADAMW, MemoryLogger, TinyAttention, assert_metrics_close, make_loader

STEPS, FULL = 6, 40
DEADLINE_S = 150  # a run takes ~20 s here (each spawned worker re-imports lightning); far more beside other jobs
COLLECTIVE_TIMEOUT = timedelta(seconds=30)  # gloo gives up on a peer that never answers


def _ddp_run(model, x, y, log_zero=True):
    """AdamW steps on TinyAttention; returns (step → merged metrics, logger, recorder names)."""
    opt = torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.5)
    rec = UpdateRecorder(window=3)
    analyses = (GramSpectrum(top_k=3), EdgeDecomposer(top_k=3))
    rec.attach(model, [opt])
    for a in analyses:
        a.bind(rec)
    logger = MemoryLogger()
    trainer = SimpleNamespace(is_global_zero=log_zero, loggers=[logger], log_every_n_steps=1)
    results = {}
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        for a in analyses:
            for step, metrics in a.publish(trainer):
                results.setdefault(step, {}).update(metrics)
    return results, logger, rec.selection.names


def _sharded_run(lo, hi, sharded):
    """AdamW on the slice [lo, hi) of a FULL-vector quadratic with fixed noise (separable, so slices
    evolve exactly as in the full vector). Returns (step → metrics, v_1..v_3 on the slice)."""
    g = torch.Generator().manual_seed(1)
    theta0, target, *noise = torch.randn(2 + STEPS, FULL, generator=g, dtype=torch.float64)
    scale = torch.linspace(0.5, 2.0, FULL, dtype=torch.float64)
    holder = nn.Module()
    holder.vec = nn.Parameter(theta0[lo:hi].clone())
    opt = torch.optim.AdamW(holder.parameters(), lr=0.05, weight_decay=0.3)
    rec = UpdateRecorder(params="all", window=3, sharded=sharded)
    spectrum, decomposer = GramSpectrum(top_k=3), EdgeDecomposer(top_k=3)
    rec.attach(holder, [opt])
    spectrum.bind(rec)
    decomposer.bind(rec)
    results = {}
    for s in range(STEPS):
        holder.vec.grad = ((holder.vec.detach() - target[lo:hi]) * scale[lo:hi] + noise[s][lo:hi]).clone()
        opt.step()
        for a in (spectrum, decomposer):
            for step, metrics in a.publish():
                results.setdefault(step, {}).update(metrics)
    return results, spectrum.directions([1, 2, 3])


def _worker(rank, world, port, out_dir):
    faulthandler.dump_traceback_later(DEADLINE_S // 2, exit=False)  # shown under "Captured stderr" if it hangs
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = next(iter(make_loader(16, 16)))
    ddp = DistributedDataParallel(TinyAttention(ADAMW))
    ddp_results, logger, names = _ddp_run(ddp, x[rank::world], y[rank::world], log_zero=rank == 0)
    half = FULL // world
    sharded_results, v = _sharded_run(rank * half, (rank + 1) * half, sharded=True)
    torch.save(
        {"ddp": ddp_results, "logged": logger.by_step, "names": names, "sharded": sharded_results, "v": v},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()
    faulthandler.cancel_dump_traceback_later()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join_within(context, seconds, fail=True):
    """Wait for every worker (a worker's failure is re-raised): True once all are done. Past ``seconds``, kill them
    all and fail (``fail``) or return False."""
    deadline = time.monotonic() + seconds
    try:
        while not context.join(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                if fail:
                    pytest.fail(f"distributed workers still running after {seconds} s (hung?): killed them")
                return False
        return True
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()


def _hang(rank):
    time.sleep(3600)


def test_a_hung_worker_fails_at_the_deadline():
    context = mp.start_processes(_hang, nprocs=2, join=False, start_method="spawn")
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="still running after 2 s"):
        _join_within(context, 2)
    assert time.monotonic() - start < 10
    assert not any(p.is_alive() for p in context.processes)
    retry = mp.start_processes(_hang, nprocs=2, join=False, start_method="spawn")
    assert _join_within(retry, 2, fail=False) is False  # the first attempt's way out: killed, no failure
    assert not any(p.is_alive() for p in retry.processes)


def _run_workers(tmp_path):
    """The two workers' output folder; a hung first attempt is killed and run again once, a second hang fails."""
    for attempt in (1, 2):
        out = tmp_path / f"attempt{attempt}"
        out.mkdir()
        context = mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=False, start_method="spawn")
        if _join_within(context, DEADLINE_S, fail=attempt == 2):
            return out
        warnings.warn(f"the distributed workers hung for {DEADLINE_S} s: killed them, running them once more")


def test_ddp_and_sharded_match_single_process(tmp_path):
    out = _run_workers(tmp_path)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    torch.manual_seed(0)
    x, y = next(iter(make_loader(16, 16)))
    single, _, names = _ddp_run(TinyAttention(ADAMW), torch.cat([x[0::2], x[1::2]]), torch.cat([y[0::2], y[1::2]]))
    assert "edge/grad_frac_v3" in single[STEPS] and len(single) == STEPS
    for r in ranks:
        assert r["names"] == names  # DDP's "module." prefix is normalized away
        assert_metrics_close(r["ddp"], single, rtol=1e-9, atol=1e-13)
    assert ranks[0]["logged"] == ranks[0]["ddp"] and ranks[1]["logged"] == {}  # only rank zero logs

    unsharded, v_full = _sharded_run(0, FULL, sharded=False)
    assert "edge/rotation_span12_deg" in unsharded[STEPS]
    for r in ranks:
        assert_metrics_close(r["sharded"], unsharded, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(torch.cat([ranks[0]["v"], ranks[1]["v"]], dim=1), v_full, rtol=1e-8, atol=1e-12)
