"""Every torch optimizer with weight decay: the recorder's decay / gradient split against a numpy brute force.

The brute force re-simulates each optimizer in float64 from the saved θ, gradients and hyperparameters (checked
against the real Δθ), running the decay stream ωθ through the same numerator filter and denominator.
"""
import math

import numpy as np
import pytest
import torch

from callbacks import EdgeDecomposer, GramSpectrum, UpdateRecorder
from oracle import ADAMW, TinyAttention, assert_metrics_close, brute_metrics, make_loader, rows_of

ATTN = ["attn_a.in_proj_weight", "attn_a.out_proj.weight", "attn_b.in_proj_weight", "attn_b.out_proj.weight"]
STEPS, INTERVAL, WINDOW = 12, 2, 3
O = torch.optim
CASES = {
    "adamw": (O.AdamW, {"lr": 0.02, "weight_decay": 0.5}),
    "adam-l2": (O.Adam, {"lr": 0.02, "weight_decay": 0.3}),
    "adam-l2-amsgrad": (O.Adam, {"lr": 0.02, "weight_decay": 0.3, "amsgrad": True}),
    "adam-decoupled": (O.Adam, {"lr": 0.02, "weight_decay": 0.5, "decoupled_weight_decay": True}),
    "sgd-nesterov": (O.SGD, {"lr": 0.2, "weight_decay": 0.3, "momentum": 0.8, "nesterov": True}),
    "rmsprop": (O.RMSprop, {"lr": 0.01, "weight_decay": 0.3}),
    "rmsprop-centered-momentum": (O.RMSprop, {"lr": 0.01, "weight_decay": 0.3, "centered": True, "momentum": 0.7}),
    "adagrad": (O.Adagrad, {"lr": 0.05, "weight_decay": 0.3, "lr_decay": 0.01}),
    "adamax": (O.Adamax, {"lr": 0.02, "weight_decay": 0.3}),
    "nadam-l2": (O.NAdam, {"lr": 0.02, "weight_decay": 0.05}),
    "nadam-decoupled": (O.NAdam, {"lr": 0.02, "weight_decay": 0.5, "decoupled_weight_decay": True}),
    "radam-l2": (O.RAdam, {"lr": 0.02, "weight_decay": 0.3}),
    "radam-decoupled": (O.RAdam, {"lr": 0.02, "weight_decay": 0.5, "decoupled_weight_decay": True}),
    "adadelta": (O.Adadelta, {"lr": 1.0, "weight_decay": 0.3}),
    "asgd": (O.ASGD, {"lr": 0.05, "weight_decay": 0.05, "lambd": 0.01, "t0": 3}),
    "adafactor": (O.Adafactor, {"lr": 0.02, "weight_decay": 0.5}),
    "muon": (O.Muon, {"lr": 0.02, "weight_decay": 0.5}),
}


def _simulate(kind: str, h: dict, th: np.ndarray, g: np.ndarray, st: dict) -> tuple:
    """One step of optimizer ``kind`` on one parameter: (Δθ or None where not simulated, decay part)."""
    lr, wd = h["lr"], h["weight_decay"]
    if kind in ("adafactor", "muon", "adamw") or h.get("decoupled_weight_decay"):
        if kind in ("adafactor", "muon"):
            return None, -lr * wd * th
        h = dict(h, weight_decay=0.0, decoupled_weight_decay=False)  # the rest of the step is the coupled optimizer without decay
        upd, _ = _simulate(kind.split("-")[0] if kind != "adamw" else "adam", h, th, g, st)
        return upd - lr * wd * th, -lr * wd * th
    z = np.zeros_like(th)
    d = wd * th
    g = (-g if h.get("maximize") else g) + d
    t = st["t"] = st.get("t", 0) + 1
    get = lambda k: st.get(k, z)  # noqa: E731
    if kind.startswith("sgd"):
        mu = h["momentum"]
        m = g if t == 1 else mu * get("m") + (1 - h["dampening"]) * g
        mw = d if t == 1 else mu * get("mw") + (1 - h["dampening"]) * d
        st.update(m=m, mw=mw)
        return (-lr * (g + mu * m), -lr * (d + mu * mw)) if h["nesterov"] else (-lr * m, -lr * mw)
    if kind.startswith("rmsprop"):
        a = h["alpha"]
        v = st["v"] = a * get("v") + (1 - a) * g * g
        if h["centered"]:
            gm = st["gm"] = a * get("gm") + (1 - a) * g
            v = v - gm * gm
        den = np.sqrt(v) + h["eps"]
        if h["momentum"] > 0:
            b = st["b"] = h["momentum"] * get("b") + g / den
            bw = st["bw"] = h["momentum"] * get("bw") + d / den
            return -lr * b, -lr * bw
        return -lr * g / den, -lr * d / den
    if kind == "adagrad":
        s = st["s"] = get("s") + g * g
        clr = lr / (1 + (t - 1) * h["lr_decay"])
        den = np.sqrt(s) + h["eps"]
        return -clr * g / den, -clr * d / den
    if kind == "adadelta":
        rho, eps = h["rho"], h["eps"]
        v = st["v"] = rho * get("v") + (1 - rho) * g * g
        ratio = np.sqrt(get("acc") + eps) / np.sqrt(v + eps)
        st["acc"] = rho * get("acc") + (1 - rho) * (ratio * g) ** 2
        return -lr * ratio * g, -lr * ratio * d
    if kind == "asgd":
        eta = st.get("eta", lr)
        st["eta"] = lr / (1 + h["lambd"] * lr * t) ** h["alpha"]
        return -eta * h["lambd"] * th - eta * g, -eta * (h["lambd"] * th + d)
    b1, b2 = h["betas"]
    m = st["m"] = b1 * get("m") + (1 - b1) * g
    mw = st["mw"] = b1 * get("mw") + (1 - b1) * d
    if kind == "adamax":
        u = st["u"] = np.maximum(b2 * get("u"), np.abs(g) + h["eps"])
        c = -lr / (1 - b1**t)
        return c * m / u, c * mw / u
    v = st["v"] = b2 * get("v") + (1 - b2) * g * g
    bc2 = 1 - b2**t
    if kind.startswith("adam"):
        if h["amsgrad"]:
            v = st["vmax"] = np.maximum(get("vmax"), v)
        den = np.sqrt(v) / math.sqrt(bc2) + h["eps"]
        c = -lr / (1 - b1**t)
        return c * m / den, c * mw / den
    if kind.startswith("nadam"):
        mu = b1 * (1 - 0.5 * 0.96 ** (t * h["momentum_decay"]))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * h["momentum_decay"]))
        prod = st["prod"] = st.get("prod", 1.0) * mu
        den = np.sqrt(v / bc2) + h["eps"]
        step = lambda gg, mm: -lr * ((1 - mu) / (1 - prod) * gg + mu_next / (1 - prod * mu_next) * mm) / den  # noqa: E731
        return step(g, m), step(d, mw)
    rho_inf = 2 / (1 - b2) - 1  # radam
    rho_t = rho_inf - 2 * t * b2**t / bc2
    c = -lr / (1 - b1**t)
    if rho_t > 5:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        f = rect * math.sqrt(bc2) / (np.sqrt(v) + h["eps"])
        return c * m * f, c * mw * f
    return c * m, c * mw


def _run(kind: str, dtype: torch.dtype, decay_from: int = 0):
    """A plain loop: two param groups (attn_a: other lr and ω), a StepLR schedule; θ, g, hyperparameters saved.
    With ``decay_from`` the groups' ω is 0 until that step."""
    cls, kwargs = CASES[kind]
    torch.manual_seed(0)
    model = TinyAttention(ADAMW).to(dtype)
    named = dict(model.named_parameters())
    a = [p for n, p in named.items() if n.startswith("attn_a") and (cls is not O.Muon or p.ndim == 2)]
    b = [p for n, p in named.items() if not n.startswith("attn_a") and (cls is not O.Muon or p.ndim == 2)]
    group_a = {"params": a, "lr": kwargs["lr"] * 0.5, "weight_decay": kwargs["weight_decay"] * 2}
    opt = cls([group_a, {"params": b}], **kwargs)
    sched = O.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    omegas = [grp["weight_decay"] for grp in opt.param_groups]
    for grp in opt.param_groups if decay_from else ():
        grp["weight_decay"] = 0.0
    rec = UpdateRecorder(interval=INTERVAL, window=WINDOW)
    rec.attach(model, [opt])
    spectrum, edge = GramSpectrum(top_k=3), EdgeDecomposer(top_k=3)
    spectrum.bind(rec)
    edge.bind(rec)
    by_param = {id(p): grp for grp in opt.param_groups for p in grp["params"]}
    thetas, grads, hypers = [], [], []
    loader = make_loader(8 * STEPS, 8)
    for step, (x, y) in enumerate(loader):
        if step == decay_from and decay_from:
            assert rec._shadow is None  # no buffer while no decay is on
            for grp, omega in zip(opt.param_groups, omegas):
                grp["weight_decay"] = omega
        opt.zero_grad()
        model.loss((x.to(dtype), y)).backward()
        thetas.append({n: named[n].detach().double().numpy().copy() for n in ATTN})
        grads.append({n: named[n].grad.double().numpy().copy() for n in ATTN})
        hypers.append({n: {k: v for k, v in by_param[id(named[n])].items() if k != "params"} for n in ATTN})
        opt.step()
        sched.step()
    thetas.append({n: named[n].detach().double().numpy().copy() for n in ATTN})
    metrics = {}
    for analysis in (spectrum, edge):
        for step, m in analysis.publish():
            metrics.setdefault(step, {}).update(m)
    return rec, metrics, thetas, grads, hypers


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("kind", list(CASES))
def test_decay_split_matches_brute_force(kind, dtype, rtol, decay_from=0):
    rec, metrics, thetas, grads, hypers = _run(kind, dtype, decay_from)
    states = {n: {} for n in ATTN}
    decay, simulated = [], []
    for th, g, h in zip(thetas, grads, hypers):
        steps = [_simulate(kind, h[n], th[n].ravel(), g[n].ravel(), states[n]) for n in ATTN]
        decay.append(np.concatenate([s[1] for s in steps]))
        simulated.append(None if steps[0][0] is None else np.concatenate([s[0] for s in steps]))
    flat = np.stack([np.concatenate([t[n].ravel() for n in ATTN]) for t in thetas])  # [N+1, P]
    delta = np.diff(flat, axis=0)
    if simulated[0] is not None:  # the brute force is the optimizer: it reproduces every Δθ
        scale = np.abs(delta).max()
        np.testing.assert_allclose(np.stack(simulated), delta, rtol=rtol, atol=rtol * scale)
    assert np.abs(decay).max() > 1e-3 * np.abs(delta).max()  # the decay part is not negligible
    total, wd = rec.window_rows()
    want_wd = rows_of(np.stack(decay), INTERVAL)[-WINDOW:]
    np.testing.assert_allclose(wd.double().numpy(), want_wd, rtol=rtol, atol=rtol * np.abs(want_wd).max())
    grad_part = rows_of(delta, INTERVAL)[-WINDOW:] - want_wd
    np.testing.assert_allclose(
        (total - wd).double().numpy(), grad_part, rtol=rtol, atol=rtol * np.abs(grad_part).max()
    )
    want = brute_metrics(flat, np.stack(decay), INTERVAL, WINDOW, top_k=3)
    pick = lambda by_step, keep: {s: {k: v for k, v in m.items() if k.startswith(keep)} for s, m in by_step.items()}  # noqa: E731
    scalars = ("update/norm_wd", "update/norm_grad", "edge/grad_frac", "edge/sigma")
    atol = 1e-12 if dtype == torch.float64 else 1e-8
    assert_metrics_close(pick(metrics, scalars), pick(want, scalars), rtol=rtol, atol=atol)
    # alignment E[g·w] is a signed mean that can cancel to ≈ 0: tolerance relative to its scale over the run
    align = pick(want, "edge/alignment")
    scale = max(abs(v) for m in align.values() for v in m.values())
    assert_metrics_close(pick(metrics, "edge/alignment"), align, rtol=rtol, atol=max(atol, rtol * scale))


@pytest.mark.parametrize("kind", ["adam-l2", "rmsprop-centered-momentum"])
def test_decay_switched_on_later_starts_its_shadow_at_zero(kind):
    """ω = 0 at attach: no shadow buffer (no per-step cost); switched on at step 5, the split stays exact."""
    test_decay_split_matches_brute_force(kind, torch.float64, 1e-6, decay_from=5)
