"""One rule per optimizer class: how its weight decay enters its update, so UpdateRecorder can split Δθ exactly.

Decoupled decay is −η ω θ_{s−1}; coupled decay enters the gradient as g + ωθ, hence the update's numerator
linearly (carried through a shadow of the momentum / first-moment buffer) over the optimizer's own denominator.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.optim import ASGD, SGD, Adadelta, Adafactor, Adagrad, Adam, Adamax, Muon, NAdam, Optimizer, RAdam, RMSprop

from ..utils.errors import ConfigurationError
from ..utils.param_selection import local_tensor

LOW_PRECISION = {torch.bfloat16: "bf16-true", torch.float16: "16-true"}  # parameter dtype -> Lightning precision


@dataclass
class DecayStep:
    """What a rule reads after one optimizer step of one parameter (flat tensors [numel], the recorder's dtype)."""

    group: dict  # the parameter's live param group (lr, weight_decay, betas... of this step)
    state: dict  # optimizer.state[param] after the step
    before: dict  # what the rule's ``before`` kept from the state before the step
    theta: Tensor  # [numel] θ_{s−1}
    shadow: Optional[Tensor]  # [numel] the rule's own buffer carried across steps (zeros at first), or None
    dtype: torch.dtype  # the parameter's dtype

    def flat(self, name: str) -> Tensor:
        """Optimizer state entry ``name`` after the step, flat [numel] in the recorder's dtype."""
        return local_tensor(self.state[name]).reshape(-1).to(self.theta.dtype)


def _never(group: dict) -> bool:
    return False


def _always(group: dict) -> bool:
    return True


def _has_momentum(group: dict) -> bool:
    return group.get("momentum", 0) != 0


def _keep_nothing(state: dict) -> dict:
    return {}


def _has_weight_decay(group: dict) -> bool:
    return group.get("weight_decay", 0) != 0


@dataclass(frozen=True)
class DecayRule:
    """How one optimizer class applies weight decay: ``decay`` returns a step's decay part [numel] of a parameter.

    Args:
        decay: ``DecayStep -> Tensor [numel]``, this step's decay part (may update ``step.shadow`` in place).
        coupled: ``group -> bool``, the decay enters through the gradient (then it is rounded with it on bf16 /
            fp16 parameters and cannot be measured there).
        shadow: ``group -> bool``, the rule needs a buffer [numel] carried across steps (the decay part of a
            momentum-like state), zeros at first.
        before: ``state -> dict``, what to copy from the parameter's optimizer state before the step (state
            entries the step overwrites); called in the pre-step hook, ``{}`` state before the first step.
        active: ``group -> bool``, the group applies any decay now (default: ``weight_decay != 0``); ``decay`` is
            called when it does, and at every step when the rule carries a shadow (which decays on after ω → 0).
        rate: optional ``group -> number or None``: when this step's decay of the group is exactly
            −rate·θ_{s−1} (decoupled decay θ ← θ(1 − rate), or decay without any buffer or denominator), the rate;
            the recorder then adds it as one multi-tensor axpy before the step and keeps no θ_{s−1}
            (docs/methods.md §5.5). None (or no ``rate``): ``decay`` is called after the step.
    """

    decay: Callable[[DecayStep], Tensor]
    coupled: Callable[[dict], bool]
    shadow: Callable[[dict], bool] = field(default=_never)
    before: Callable[[dict], dict] = field(default=_keep_nothing)
    active: Callable[[dict], bool] = field(default=_has_weight_decay)
    rate: Optional[Callable[[dict], Any]] = None


_RULES: dict[type, DecayRule] = {}


def register_decay_rule(optimizer_class: type, rule: DecayRule) -> None:
    """Use ``rule`` for ``optimizer_class`` and its subclasses (replacing any earlier rule for that class)."""
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
        raise ConfigurationError(f"register_decay_rule needs a torch.optim.Optimizer subclass, got {optimizer_class!r}")
    _RULES[optimizer_class] = rule


def decay_rule(optimizer: Optimizer) -> Optional[DecayRule]:
    """The rule registered for the optimizer's class or its nearest base class (None: no rule)."""
    for cls in type(optimizer).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


# ---------------------------------------------------------------- shared pieces
def _scalar(x: Any) -> Any:
    """A python float from a number or a CPU scalar tensor (no device sync); a device tensor stays a tensor."""
    return float(x) if not isinstance(x, Tensor) or x.device.type == "cpu" else x


def decoupled(step: DecayStep, rate: Any) -> Tensor:
    """θ_{s−1} ← θ_{s−1}(1 − rate), as torch's ``param.mul_(1 − lr·ω)``: −rate·θ, or on bf16 / fp16 parameters
    the rounded op's effect fl(θ(1 − rate)) − θ (the difference of two nearby low-precision values is exact)."""
    if step.dtype in LOW_PRECISION:
        return step.theta.to(step.dtype).mul_(1 - rate).to(step.theta.dtype).sub_(step.theta)
    return step.theta * (-rate)


def _lerp_shadow(step: DecayStep, beta: Any) -> Tensor:
    """Shadow of a first moment m ← β m + (1 − β) g: the decay part m_wd ← β m_wd + (1 − β) ωθ_{s−1}."""
    d = step.theta * step.group["weight_decay"]
    return step.shadow.lerp_(d, 1 - beta)


def _lr_wd(group: dict) -> Any:
    return group["lr"] * group["weight_decay"]


def _coupled_flag(group: dict) -> bool:
    return not group.get("decoupled_weight_decay", False)


def _decoupled_rate(group: dict) -> Any:
    """η·ω of a group whose decay is decoupled (AdamW, Adam / NAdam / RAdam with decoupled_weight_decay), else None."""
    return None if _coupled_flag(group) else _lr_wd(group)


def _plain_rate(group: dict) -> Any:
    """η·ω: Adafactor, Muon (always decoupled)."""
    return _lr_wd(group)


def _sgd_rate(group: dict) -> Any:
    """η·ω of SGD without momentum (the coupled ωθ goes straight into the step), else None."""
    return _lr_wd(group) if group["momentum"] == 0 else None


# ---------------------------------------------------------------- the rules of torch's optimizers
def _adam(step: DecayStep) -> Tensor:
    """Adam / AdamW: decoupled −ηωθ; coupled −η/bc₁ · m_wd / (√v̂ / √bc₂ + ε), v̂ = v (or max v with amsgrad)."""
    g = step.group
    if not _coupled_flag(g):
        return decoupled(step, _lr_wd(step.group))
    beta1, beta2 = (_scalar(b) for b in g["betas"])
    t = _scalar(step.state["step"])
    m_wd = _lerp_shadow(step, beta1)
    v = step.flat("max_exp_avg_sq" if g["amsgrad"] else "exp_avg_sq")
    denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(g["eps"])  # [numel]
    return m_wd / denom * (-g["lr"] / (1 - beta1**t))


def _decoupled(step: DecayStep) -> Tensor:
    """Adafactor, Muon: −ηωθ (torch's ``param.mul_(1 − lr·ω)`` before the step, with the group's own lr)."""
    return decoupled(step, _lr_wd(step.group))


def _sgd_before(state: dict) -> dict:
    return {"fresh": state.get("momentum_buffer") is None}


def _sgd(step: DecayStep) -> Tensor:
    """SGD: d = ωθ enters the momentum buffer b ← μb + (1 − τ)d (b = d at first); −η(d + μb) with Nesterov."""
    g = step.group
    lr, mu, d = g["lr"], g["momentum"], step.theta * g["weight_decay"]
    if mu == 0:
        return d * (-lr)
    if step.before["fresh"]:  # torch initialises the buffer to the raw d_p, without dampening
        step.shadow.copy_(d)
    else:
        step.shadow.mul_(mu).add_(d, alpha=1 - g["dampening"])
    return (d + step.shadow * mu) * (-lr) if g["nesterov"] else step.shadow * (-lr)


def _rmsprop(step: DecayStep) -> Tensor:
    """RMSprop: avg = √(v − ḡ²) (centered) or √v, plus ε; −η d/avg, or through the buffer b ← μb + d/avg."""
    g = step.group
    v = step.flat("square_avg")
    if g["centered"]:
        mean = step.flat("grad_avg")
        v = v - mean * mean
    share = step.theta * g["weight_decay"] / v.sqrt().add_(g["eps"])  # [numel] d / avg
    if g["momentum"] > 0:
        share = step.shadow.mul_(g["momentum"]).add_(share)
    return share * (-g["lr"])


def _adagrad(step: DecayStep) -> Tensor:
    """Adagrad: −η / (1 + (t − 1)·lr_decay) · d / (√sum + ε)."""
    g = step.group
    t = _scalar(step.state["step"])
    clr = g["lr"] / (1 + (t - 1) * g["lr_decay"])
    return step.theta * g["weight_decay"] / step.flat("sum").sqrt().add_(g["eps"]) * (-clr)


def _adamax(step: DecayStep) -> Tensor:
    """Adamax: −η / (1 − β₁ᵗ) · m_wd / u, with u the state's exp_inf (max(β₂u, |g| + ε))."""
    g = step.group
    beta1 = _scalar(g["betas"][0])
    t = _scalar(step.state["step"])
    m_wd = _lerp_shadow(step, beta1)
    return m_wd / step.flat("exp_inf") * (-g["lr"] / (1 - beta1**t))


def _nadam(step: DecayStep) -> Tensor:
    """NAdam: decoupled −ηωθ; coupled −η[(1 − μₜ)/(1 − Πμ) d + μₜ₊₁/(1 − Πμ·μₜ₊₁) m_wd] / (√(v/bc₂) + ε)."""
    g = step.group
    if not _coupled_flag(g):
        return decoupled(step, _lr_wd(step.group))
    beta1, beta2 = (_scalar(b) for b in g["betas"])
    t, prod = _scalar(step.state["step"]), _scalar(step.state["mu_product"])  # Πμ up to μₜ
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * g["momentum_decay"]))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * g["momentum_decay"]))
    m_wd = _lerp_shadow(step, beta1)
    denom = (step.flat("exp_avg_sq") / (1 - beta2**t)).sqrt_().add_(g["eps"])  # [numel]
    d = step.theta * g["weight_decay"]
    num = d * ((1.0 - mu) / (1.0 - prod)) + m_wd * (mu_next / (1.0 - prod * mu_next))
    return num / denom * (-g["lr"])


def _radam(step: DecayStep) -> Tensor:
    """RAdam: decoupled −ηωθ; coupled −η m_wd / bc₁ · (r √bc₂ / (√v + ε) when ρₜ > 5, else 1)."""
    g = step.group
    if not _coupled_flag(g):
        return decoupled(step, _lr_wd(step.group))
    beta1, beta2 = (_scalar(b) for b in g["betas"])
    t = _scalar(step.state["step"])
    m_wd = _lerp_shadow(step, beta1) * (-g["lr"] / (1 - beta1**t))
    bc2 = 1 - beta2**t
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / bc2
    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
    adaptive = m_wd * (rect * bc2**0.5) / step.flat("exp_avg_sq").sqrt().add_(g["eps"])
    if isinstance(rho_t, Tensor):  # capturable: step lives on the device
        return torch.where(rho_t > 5.0, adaptive, m_wd)
    return adaptive if rho_t > 5.0 else m_wd


def _adadelta_before(state: dict) -> dict:
    return {"acc_delta": local_tensor(state["acc_delta"]).reshape(-1).clone()} if "acc_delta" in state else {}


def _adadelta(step: DecayStep) -> Tensor:
    """Adadelta: −η d · √(Δ_{s−1} + ε) / √(v + ε), with Δ_{s−1} the state's acc_delta before the step."""
    g = step.group
    acc = step.before.get("acc_delta")
    acc = torch.zeros_like(step.theta) if acc is None else acc.to(step.theta.dtype)
    ratio = acc.add(g["eps"]).sqrt_().div_(step.flat("square_avg").add(g["eps"]).sqrt_())  # [numel]
    return step.theta * g["weight_decay"] * ratio * (-g["lr"])


def _asgd_before(state: dict) -> dict:
    return {"eta": state["eta"].clone()} if "eta" in state else {}


def _asgd(step: DecayStep) -> Tensor:
    """ASGD: both its decay term θ(1 − λη) and the coupled ωθ are plain: −η(λ + ω)θ with η the state's eta
    before the step (the group's lr at the first step)."""
    g = step.group
    eta = _scalar(step.before.get("eta", g["lr"]))
    return step.theta * (-eta * (g["lambd"] + g["weight_decay"]))


def _asgd_active(group: dict) -> bool:
    return group["lambd"] != 0 or group.get("weight_decay", 0) != 0


for _cls, _rule in {
    Adam: DecayRule(_adam, coupled=_coupled_flag, shadow=_coupled_flag, rate=_decoupled_rate),
    SGD: DecayRule(_sgd, coupled=_always, shadow=_has_momentum, before=_sgd_before, rate=_sgd_rate),
    RMSprop: DecayRule(_rmsprop, coupled=_always, shadow=_has_momentum),
    Adagrad: DecayRule(_adagrad, coupled=_always),
    Adamax: DecayRule(_adamax, coupled=_always, shadow=_always),
    NAdam: DecayRule(_nadam, coupled=_coupled_flag, shadow=_coupled_flag, rate=_decoupled_rate),
    RAdam: DecayRule(_radam, coupled=_coupled_flag, shadow=_coupled_flag, rate=_decoupled_rate),
    Adadelta: DecayRule(_adadelta, coupled=_always, before=_adadelta_before),
    ASGD: DecayRule(_asgd, coupled=_always, before=_asgd_before, active=_asgd_active),
    Adafactor: DecayRule(_decoupled, coupled=_never, rate=_plain_rate),
    Muon: DecayRule(_decoupled, coupled=_never, rate=_plain_rate),
}.items():
    register_decay_rule(_cls, _rule)
