"""Record each optimizer step's update Δθ of selected parameters, split exactly into decay and gradient parts.

Hooks torch's own ``optimizer.step`` (pre: snapshot θ_{s−1}; post: Δθ and the decay term the optimizer
applied, from the lr / ω of its live param groups), sums ``interval`` steps into a row and keeps the last
``window`` rows for the spectral callbacks.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional, Sequence

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from .utils.decay_rules import LOW_PRECISION, DecayRule, DecayStep, decay_rule
from .utils.errors import ConfigurationError, NonFiniteError
from .utils.param_selection import ParamSpec, Selection, check_spec, local_tensor, matching_parameters, select_parameters
from .utils.trainer import find, find_named


@dataclass
class RowEvent:
    """A completed row, handed to listeners in its own ring slot before it joins the window.

    The ring has window + 1 slots: the window's rows and the row being summed (which takes the oldest row's slot).
    """

    index: int  # 0-based row number
    steps: int  # optimizer steps recorded when the row completed
    total: Tensor  # [P] Δθ summed over the row's steps: ring_total[slot]
    wd: Tensor  # [P] decay part of it: ring_wd[slot]
    ring_total: Tensor  # [window + 1, P]: row r sits in slot r % (window + 1); the other slots hold the window's rows
    ring_wd: Tensor  # [window + 1, P]
    slot: int  # index % (window + 1)


@dataclass
class _Track:
    """Per-parameter views into the flat buffers, and where the optimizer keeps the parameter."""

    name: str
    param: Tensor
    group: Optional[int]  # index into optimizer.param_groups (load_state_dict replaces the group dicts, never their
    # order); None: a frozen parameter (include_frozen=True) not in the optimizer yet
    total: Tensor  # −θ at the row's start, then (at the row's end) the row's Δθ = θ_end − θ_start
    wd: Tensor
    raw: Optional[Tensor]
    cut: slice  # where the parameter sits in the flat buffers
    shadow: Optional[Tensor]  # the decay rule's buffer (e.g. the decay part of SGD's momentum buffer)
    prev: Optional[Tensor] = None  # θ_{s−1}, kept only for a decay its rule computes after the step
    before: dict = field(default_factory=dict)  # what the decay rule kept from the state before the step
    after: bool = False  # this step's decay is computed after the step (from prev), by the rule's ``decay``


def _decay_problem(optimizer: Optimizer, group: dict, dtype: torch.dtype) -> Optional[str]:
    """Why the decay part of this group's steps on ``dtype`` parameters cannot be split exactly (None: it can)."""
    wd, name = group.get("weight_decay", 0), type(optimizer).__name__
    rule = decay_rule(optimizer)
    if rule is None:
        if wd == 0:
            return None
        return (
            f"UpdateRecorder cannot split the weight decay of {name}(weight_decay={wd}): {name} has no decay rule; "
            f"register one with lit_grok.callbacks.register_decay_rule({name}, DecayRule(...)) (see UpdateRecorder), "
            "or use weight_decay=0"
        )
    if not rule.active(group) or dtype not in LOW_PRECISION:
        return None
    where = f"{str(dtype).removeprefix('torch.')} parameters (precision={LOW_PRECISION[dtype]!r})"
    if rule.coupled(group):  # g + ωθ is rounded (and enters the optimizer's state) before anything is observable
        return (
            f"UpdateRecorder cannot measure the weight decay {name}(weight_decay={wd}) on {where} applies: it is "
            "rounded together with the gradient; use fp32 parameters (e.g. precision='bf16-mixed'), AdamW, or "
            "weight_decay=0"
        )
    if group.get("fused"):  # one kernel rounds θ(1 − ηω) − η·step once
        return (
            f"UpdateRecorder cannot measure the weight decay fused {name} applies to {where}: the fused kernel "
            "rounds it together with the gradient step; use fused=False"
        )
    return None


def _needs_shadow(rule: DecayRule, group: dict) -> bool:
    """The group's decay is on and its rule carries it through a buffer (allocated only then: plain Adam,
    RMSprop... with ω = 0 cost nothing per step)."""
    return rule.active(group) and rule.shadow(group)


def _check_decay(optimizer: Optimizer, group: dict, dtype: torch.dtype) -> None:
    problem = _decay_problem(optimizer, group, dtype)
    if problem is not None:
        raise ConfigurationError(problem)


_AFTER = object()  # a step's decay that its rule computes after the step


def _to_cpu(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach().cpu().clone()


class UpdateRecorder(Callback):
    """Rows of summed updates Δθ (and their weight-decay part) of a parameter selection, per ``interval`` steps.

    Counts exactly the optimizer steps that happen (accumulation, manual optimization, AMP-skipped steps).

    Args:
        params: ``"attn_weights"`` (attention projection matrices, the reference: torch ``nn.MultiheadAttention``,
            nanoGPT ``attn.c_attn``/``attn.c_proj``, Hugging Face ``q/k/v/o_proj``, ``out_proj``,
            ``query/key/value``, timm ``attn.qkv``/``attn.proj``; see ``param_selection.is_attention_weight``),
            ``"all_matrices"``, ``"all"``, or a list of glob patterns over parameter names. A tied parameter
            matches by any of its names and counts once; wrapper components (``_orig_mod.``, DDP's ``module.``,
            Fabric's) are left out of names only where the module really is such a wrapper.
        interval: optimizer steps summed into one row (the reference uses 100 for Dyck, 500 for SCAN).
        window: rows kept for the Gram window (the reference uses 5).
        on_nonfinite: ``"error"`` stops on a non-finite row; ``"skip"`` drops it with a warning.
        keep_raw_grad: also sum the gradients the optimizer saw (after clipping / unscaling).
        sharded: parameters are sharded across ranks (sum the w×w products over ranks); None detects DTensors.
        name: this recorder's name, so several can share a trainer: its checkpoint state and the analyses' tags
            (``edge/<name>/sigma_1``, ``update/<name>/norm_total``, ...) are its own; analyses pick it with
            ``recorder=<name>``. None: the trainer's only recorder, tags ``edge/sigma_1``.
        optimizer: index into ``trainer.optimizers`` of the optimizer to watch; only its parameters are selected.
            None: the one optimizer that trains every selected parameter.
        include_frozen: also select parameters frozen at fit start; they add exact zeros until they are unfrozen
            (e.g. by ``BaseFinetuning``), then their updates. Without it, unfreezing a parameter that ``params``
            matches stops the fit with a ConfigurationError at that step: the row length P is fixed at fit start
            (checked before every step of its optimizer; a plain loop calls ``follow_unfrozen()`` after unfreezing).

    Rows are labelled by ``trainer.global_step`` when the trainer has one optimizer; with several (manual
    optimization, e.g. a GAN's generator and discriminator) by this recorder's optimizer's own step count (its
    ``step()`` calls that ran, which Lightning's global_step sums over all optimizers).

    The decay part comes from the optimizer's decay rule (``callbacks/utils/decay_rules.py``,
    docs/methods.md §5.3), one per optimizer class: decoupled decay is −η ω θ_{s−1}; coupled decay g + ωθ is
    carried through a shadow of the optimizer's momentum / first moment and divided by the optimizer's own
    denominator (read from its state after the step), so the split is exact given that denominator. Rules exist
    for every torch optimizer with weight decay (AdamW, Adam, SGD, RMSprop, Adagrad, Adamax, NAdam, RAdam,
    Adadelta, ASGD, Adafactor, Muon); any other optimizer with weight decay is refused until
    ``register_decay_rule`` gives one.
    With a rule that keeps a shadow (coupled decay through momentum), attach before the first step (or resume
    from a checkpoint holding this callback): the decay part of a buffer that predates the recorder is taken as 0.

    Hyperparameters are read from the optimizer's param groups at every step, so schedulers, a restored
    optimizer state and ``WeightDecaySchedule`` are followed. For parameters stored in bf16 / fp16
    (``precision="bf16-true"``) the decay part is the rounded decay the optimizer applied (zero when
    θ·(1 − ηω) rounds back to θ); coupled decay and fused AdamW cannot be measured there and are refused.

    Cost (docs/methods.md §4.8, §5.5): a row's Δθ is θ_end − θ_start (one snapshot per row, so changes made to the
    parameters between optimizer steps inside a row count as part of it); a decoupled decay (AdamW, SGD without
    momentum...) is one multi-tensor axpy per step and the recorder holds 2·window + 2 copies of the selection; a
    coupled decay keeps θ_{s−1} and runs its rule per tensor after the step (one more copy, and slower).

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import EdgeDecomposer, GramSpectrum, UpdateRecorder

        recorder = UpdateRecorder(params="attn_weights", interval=100, window=5)  # a row = 100 summed updates
        trainer = Trainer(callbacks=[recorder, GramSpectrum(top_k=5), EdgeDecomposer(top_k=5)])
        # after trainer.fit(model): recorder.window_rows() -> (X_total, X_wd), each [w, P]

    A rule for an optimizer of your own, e.g. one that steps θ ← θ(1 − ηω) − η·sign(g)::

        import torch
        from lit_grok.callbacks import DecayRule, register_decay_rule
        from lit_grok.callbacks.utils.decay_rules import decoupled

        class SignSGD(torch.optim.Optimizer):
            def step(self, closure=None): ...  # θ.mul_(1 − lr·ω).add_(sign(g), alpha=−lr) per parameter

        register_decay_rule(SignSGD, DecayRule(
            decay=lambda step: decoupled(step, step.group["lr"] * step.group["weight_decay"]),  # −ηωθ_{s−1}
            coupled=lambda group: False,  # applied to θ, not through the gradient
        ))
    """

    def __init__(
        self,
        params: ParamSpec = "attn_weights",
        interval: int = 1,
        window: int = 5,
        on_nonfinite: str = "error",
        keep_raw_grad: bool = False,
        sharded: Optional[bool] = None,
        name: Optional[str] = None,
        optimizer: Optional[int] = None,
        include_frozen: bool = False,
    ) -> None:
        check_spec(params)
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ConfigurationError(f"name must be a non-empty string without '/' (it goes into tags), got {name!r}")
        if optimizer is not None and (isinstance(optimizer, bool) or not isinstance(optimizer, int) or optimizer < 0):
            raise ConfigurationError(f"optimizer must be an index >= 0 into trainer.optimizers or None, got {optimizer!r}")
        if not isinstance(interval, int) or interval < 1:
            raise ConfigurationError(f"interval must be an integer >= 1 (optimizer steps per row), got {interval!r}")
        if not isinstance(window, int) or window < 2:
            raise ConfigurationError(f"window must be an integer >= 2 (rows per Gram window), got {window!r}")
        if on_nonfinite not in ("error", "skip"):
            raise ConfigurationError(f"on_nonfinite must be 'error' or 'skip', got {on_nonfinite!r}")
        self.params = list(params) if not isinstance(params, str) else params
        self.interval = interval
        self.window = window
        self.on_nonfinite = on_nonfinite
        self.keep_raw_grad = keep_raw_grad
        self.sharded = sharded
        self.name = name
        self.optimizer = optimizer
        self.include_frozen = include_frozen
        self.steps_done = 0  # optimizer steps recorded
        self.rows_done = 0  # rows that entered the ring
        self.rows_skipped = 0  # non-finite rows dropped (on_nonfinite="skip")
        self._row_steps = 0  # steps in the current partial row
        self._selection: Optional[Selection] = None
        self._tracks: list[_Track] = []
        self._handles: list[Any] = []
        self._listeners: list[Callable[[RowEvent], None]] = []
        self._pending_state: Optional[dict] = None
        self._is_sharded = False
        self._shadow: Optional[Tensor] = None
        self._optimizer: Optional[Optimizer] = None  # the hooked optimizer
        self._left_out: list[tuple[str, Tensor]] = []  # matched by ``params`` but frozen at attach (not selected)
        self._prev: Optional[Tensor] = None
        self._captured = False

    # ---------------------------------------------------------------- public API
    @staticmethod
    def find(trainer: "pl.Trainer", name: Optional[str] = None) -> "UpdateRecorder":
        """The trainer's UpdateRecorder called ``name``; None: its only one (a ConfigurationError naming the
        choices if there are several, or none)."""
        if name is None and len([cb for cb in trainer.callbacks if isinstance(cb, UpdateRecorder)]) <= 1:
            return find(trainer, UpdateRecorder, "add one, e.g. callbacks=[UpdateRecorder(), GramSpectrum(), EdgeDecomposer()]")
        return find_named(trainer, UpdateRecorder, name, "recorder")

    @property
    @override
    def state_key(self) -> str:
        """Unnamed: the class name (as before names existed); named: one key per name, so several fit a trainer."""
        return super().state_key if self.name is None else self._generate_state_key(name=self.name)

    def tag(self, key: str) -> str:
        """A logged name of this recorder's analyses: ``edge/sigma_1`` -> ``edge/<name>/sigma_1`` (unnamed: as is)."""
        if self.name is None:
            return key
        head, sep, rest = key.partition("/")
        return f"{head}/{self.name}/{rest}" if sep else f"{key}/{self.name}"

    def step_label(self, row_steps: int, trainer: Optional["pl.Trainer"]) -> int:
        """The step a row that completed after ``row_steps`` recorded steps is logged at: trainer.global_step then
        (the recorder's count can lag it: AMP skips, late attach) with one optimizer; with several, the optimizer's
        own step count (global_step counts every optimizer's steps)."""
        if trainer is None or len(trainer.optimizers) > 1:
            return row_steps
        return trainer.global_step - (self.steps_done - row_steps)

    @property
    def selection(self) -> Selection:
        if self._selection is None:
            raise RuntimeError("UpdateRecorder has no selection yet: it is made when fitting starts (or by attach())")
        return self._selection

    def flat_params(self) -> Tensor:
        """Detached copy [P] of the selected parameters (this rank's shards), in selection order."""
        return torch.cat([local_tensor(p).reshape(-1) for p in self.selection.params])

    @torch.no_grad()
    def write_flat_params(self, vec: Tensor) -> None:
        """Copy ``vec`` [P] into the selected parameters, in place."""
        if vec.numel() != self.selection.numel:
            raise ConfigurationError(f"write_flat_params needs {self.selection.numel} values, got {vec.numel()}")
        for block, p in zip(self.selection.blocks, self.selection.params):
            local_tensor(p).copy_(vec[block.offset : block.offset + block.numel].view(block.shape))

    def window_rows(self, include_raw: bool = False) -> tuple[Tensor, ...]:
        """(X_total, X_wd[, X_raw]) [w, P] of the last w = min(window, rows_done) rows, oldest→newest."""
        if include_raw and not self.keep_raw_grad:
            raise ConfigurationError("raw gradient rows need UpdateRecorder(keep_raw_grad=True)")
        if self._selection is None:
            raise RuntimeError("UpdateRecorder has no rows yet: it starts recording when fitting starts")
        order = self.ring_order(self.rows_done)
        rings = (self._ring_total, self._ring_wd) + ((self._ring_raw,) if include_raw else ())
        return tuple(r[order] for r in rings)

    def add_row_listener(self, fn: Callable[[RowEvent], None]) -> None:
        """Call ``fn(event)`` inside the optimizer post-hook whenever a row completes (device work only)."""
        if fn not in self._listeners:
            self._listeners.append(fn)

    def all_reduce(self, t: Tensor) -> Tensor:
        """Sum ``t`` over ranks when the selection is sharded (every rank must call this); else return it."""
        if self._is_sharded:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    # ---------------------------------------------------------------- attach / detach
    def attach(self, module: nn.Module, optimizers: Sequence[Any]) -> None:
        """Select parameters of ``module``, allocate the buffers and hook the optimizer that trains them."""
        self.detach()
        optimizers = [getattr(o, "_optimizer", o) for o in optimizers]
        if self.optimizer is not None and self.optimizer >= len(optimizers):
            raise ConfigurationError(
                f"UpdateRecorder(optimizer={self.optimizer}) but the trainer has {len(optimizers)} optimizer(s): "
                f"use an index below {len(optimizers)}"
            )
        held = {id(p): k for k, o in enumerate(optimizers) for g in o.param_groups for p in g["params"]}
        keep = None
        if self.optimizer is not None:  # its optimizer's parameters, and (include_frozen) frozen ones in none yet
            keep = lambda p: held.get(id(p), -1) == self.optimizer or (  # noqa: E731
                self.include_frozen and not p.requires_grad and id(p) not in held
            )
        selection = select_parameters(module, self.params, self.include_frozen, keep)
        optimizer, groups = self._owner(selection, optimizers)
        self._optimizer = optimizer
        for p, i in zip(selection.params, groups):
            if i is not None:
                _check_decay(optimizer, optimizer.param_groups[i], p.dtype)
        mine = next(k for k, o in enumerate(optimizers) if o is optimizer)
        self._left_out = [  # frozen parameters `params` matches that are not selected and no other optimizer holds
            (n, p) for n, p in matching_parameters(module, self.params).items()
            if not p.requires_grad and not self.include_frozen and held.get(id(p), mine) == mine
        ]
        self._is_sharded = self.sharded if self.sharded is not None else any(
            hasattr(p, "to_local") for p in selection.params
        )
        if self._selection is None or (self._selection.names, self._selection.numel) != (selection.names, selection.numel):
            self._allocate(selection)
        self._selection = selection
        self._make_tracks(groups)
        rule = decay_rule(optimizer)
        if rule is not None and any(_needs_shadow(rule, optimizer.param_groups[i]) for i in groups if i is not None):
            self._ensure_shadow()
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _owner(self, selection: Selection, optimizers: list[Optimizer]) -> tuple[Optimizer, list[Optional[int]]]:
        """The optimizer training the selection, and the index of each selected parameter's param group (None: a
        frozen parameter, with include_frozen, that no optimizer holds yet)."""
        where = {}
        for opt in optimizers:
            for i, group in enumerate(opt.param_groups):
                for p in group["params"]:
                    where[id(p)] = (opt, i)
        missing = [
            n for n, p in zip(selection.names, selection.params) if id(p) not in where and p.requires_grad
        ]
        if missing:
            raise ConfigurationError(f"selected parameter {missing[0]!r} is in no optimizer: select only trained parameters")
        owners = {id(where[id(p)][0]): where[id(p)][0] for p in selection.params if id(p) in where}
        if len(owners) > 1:
            raise ConfigurationError(
                "the selected parameters span several optimizers: bind the recorder to one with "
                "UpdateRecorder(optimizer=<index>), or select parameters of one optimizer"
            )
        if not owners:
            if self.optimizer is None:
                raise ConfigurationError("no selected parameter is in an optimizer yet: give UpdateRecorder(optimizer=<index>)")
            owners = {0: optimizers[self.optimizer]}
        return next(iter(owners.values())), [where[id(p)][1] if id(p) in where else None for p in selection.params]

    def follow_unfrozen(self) -> None:
        """Before a step of the hooked optimizer (Lightning calls it; a plain loop calls it after unfreezing):
        frozen selected parameters that joined the optimizer get their param group; a parameter ``params``
        matches that was left out frozen and is now trainable stops the fit (the row length P is fixed)."""
        optimizer = self._optimizer
        if optimizer is None:
            return
        for name, p in self._left_out:
            if p.requires_grad:
                raise ConfigurationError(
                    f"UpdateRecorder{'' if self.name is None else f'(name={self.name!r})'}: parameter {name!r}, frozen "
                    f"at fit start, was unfrozen before optimizer step {self.steps_done + 1}, but the rows have a "
                    "fixed length P chosen at fit start: select it from the start with include_frozen=True, or "
                    "leave it out of `params`"
                )
        waiting = [t for t in self._tracks if t.group is None]
        if not waiting:
            return
        where = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
        for t in waiting:
            if id(t.param) in where:
                t.group = where[id(t.param)]
                group = optimizer.param_groups[t.group]
                _check_decay(optimizer, group, t.param.dtype)
                rule = decay_rule(optimizer)
                if rule is not None and _needs_shadow(rule, group):
                    self._ensure_shadow()
            elif t.param.requires_grad:
                raise ConfigurationError(
                    f"UpdateRecorder: selected parameter {t.name!r} was unfrozen but is in no optimizer of the "
                    f"recorder's: add it to that optimizer (e.g. BaseFinetuning.unfreeze_and_add_param_group)"
                )

    def _allocate(self, selection: Selection) -> None:
        p0 = selection.params[0]
        dtype = torch.promote_types(p0.dtype, torch.float32)
        for p in selection.params:
            dtype = torch.promote_types(dtype, p.dtype)
        n, dev = selection.numel, p0.device
        zeros = partial(torch.zeros, dtype=dtype, device=dev)
        slots = self.window + 1  # the window's rows and the row being summed
        self._ring_total, self._ring_wd = zeros(slots, n), zeros(slots, n)
        self._ring_raw = zeros(slots, n) if self.keep_raw_grad else None
        self._shadow = self._prev = None
        self.steps_done = self.rows_done = self.rows_skipped = self._row_steps = 0
        self._tracks = []  # made again for this selection by _make_tracks
        self._point_accumulators()

    def _point_accumulators(self) -> None:
        """The row being summed lives in ring slot rows_done % (window + 1) (the slot of the row that left the
        window): acc_total holds −θ_start during the row and its Δθ at the end, so a completed row needs no copy."""
        slot = self.rows_done % (self.window + 1)
        self._acc_total, self._acc_wd = self._ring_total[slot], self._ring_wd[slot]
        self._acc_raw = self._ring_raw[slot] if self._ring_raw is not None else None
        for t in self._tracks:
            t.total, t.wd = self._acc_total[t.cut], self._acc_wd[t.cut]
            t.raw = self._acc_raw[t.cut] if self._acc_raw is not None else None

    def _ensure_shadow(self) -> None:
        """Allocate the decay rule's shadow [P] (zeros: no decay has entered the optimizer's buffers yet)."""
        if self._shadow is None:
            self._shadow = torch.zeros_like(self._acc_wd)
        for t in self._tracks:
            t.shadow = self._shadow[t.cut]

    def _ensure_prev(self) -> None:
        """Allocate θ_{s−1} [P], needed only by decay rules that compute the decay after the step."""
        if self._prev is None:
            self._prev = torch.zeros_like(self._acc_wd)
            for t in self._tracks:
                t.prev = self._prev[t.cut]

    def _make_tracks(self, groups: list[Optional[int]]) -> None:
        self._tracks = []
        for block, p, group_index in zip(self.selection.blocks, self.selection.params, groups):
            cut = slice(block.offset, block.offset + block.numel)
            self._tracks.append(
                _Track(
                    name=block.name,
                    param=p,
                    group=group_index,
                    cut=cut,
                    total=self._acc_total[cut],
                    wd=self._acc_wd[cut],
                    raw=self._acc_raw[cut] if self._acc_raw is not None else None,
                    shadow=self._shadow[cut] if self._shadow is not None else None,
                    prev=self._prev[cut] if self._prev is not None else None,
                )
            )

    # ---------------------------------------------------------------- per-step path (no host sync)
    # A row's Δθ telescopes: the row keeps −θ_start and adds θ_end when it completes (one snapshot per row, not
    # per step). The decay part is taken from θ_{s−1} once the step's gradients exist (after the closure, which
    # the optimizer runs inside step()): a decoupled decay as one multi-tensor axpy −rate·θ_{s−1}; a rule without
    # ``rate`` (coupled decay through the optimizer's buffers / denominator) keeps θ_{s−1} for after the step.
    @torch.no_grad()
    def _pre_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> Optional[tuple]:
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args = (optimizer, closure?)
        self._captured = False
        if not callable(closure):
            self._capture(optimizer)
            return None

        def closure_then_capture() -> Any:
            out = closure()
            if not self._captured:  # gradients are final now and θ is still θ_{s−1}
                with torch.no_grad():
                    self._capture(optimizer)
            return out

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_capture}
        return (args[0], closure_then_capture, *args[2:]), kwargs

    def _capture(self, optimizer: Optimizer) -> None:
        """θ_{s−1} and the step's gradients: start a row, add this step's decoupled decay, keep what the rule needs."""
        self._captured = True
        thetas = [local_tensor(t.param).reshape(-1).to(t.wd.dtype) for t in self._tracks]
        if self._row_steps == 0:  # the slot still holds the row that left the window
            for t, theta in zip(self._tracks, thetas):
                torch.neg(theta, out=t.total)
            for acc in (self._acc_wd, self._acc_raw):
                if acc is not None:
                    acc.zero_()
        rule = decay_rule(optimizer)
        axpy: dict[Any, tuple[list[Tensor], list[Tensor]]] = {}  # rate -> (decay slices, θ_{s−1})
        raw: tuple[list[Tensor], list[Tensor]] = ([], [])
        for t, theta in zip(self._tracks, thetas):
            t.after = False
            if t.param.grad is None:  # torch optimizers leave parameters without a gradient untouched
                continue
            if t.raw is not None:
                raw[0].append(t.raw)
                raw[1].append(local_tensor(t.param.grad).reshape(-1))
            rate = self._decay_rate(optimizer, rule, t)
            if rate is None:  # no decay this step
                continue
            if rate is _AFTER:
                self._ensure_prev()
                t.prev.copy_(theta)
                t.before = rule.before(optimizer.state.get(t.param, {}))
                t.after = True
                continue
            slices, sources = axpy.setdefault(rate, ([], []))
            slices.append(t.wd)
            sources.append(theta)
        for rate, (slices, sources) in axpy.items():
            torch._foreach_add_(slices, sources, alpha=-rate)
        if raw[0]:
            torch._foreach_add_(raw[0], raw[1])

    def _decay_rate(self, optimizer: Optimizer, rule: Optional[DecayRule], t: _Track) -> Any:
        """This step's decay of ``t``: None (none), a python number r (it is −r·θ_{s−1}), or _AFTER (the rule's
        ``decay`` computes it after the step)."""
        group = optimizer.param_groups[t.group]
        _check_decay(optimizer, group, t.param.dtype)  # ω may have been switched on since attach
        if rule is None or not (rule.active(group) or t.shadow is not None):  # a shadow decays on after ω → 0
            return None
        if t.shadow is None and _needs_shadow(rule, group):  # ω switched on after attach: no decay entered before
            self._ensure_shadow()
        if t.shadow is None and rule.rate is not None and t.param.dtype not in LOW_PRECISION:
            rate = rule.rate(group)
            if isinstance(rate, Tensor) and rate.device.type == "cpu" and rate.numel() == 1:
                rate = float(rate)
            if isinstance(rate, (int, float)):
                return rate
        return _AFTER

    @torch.no_grad()
    def _post_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if not self._captured:
            raise RuntimeError(
                f"{type(optimizer).__name__}.step(closure) returned without calling its closure: UpdateRecorder "
                "needs the gradients of the step (call the closure, or step without one)"
            )
        rule = decay_rule(optimizer)
        for t in self._tracks:
            if t.after:
                group = optimizer.param_groups[t.group]
                state = optimizer.state.get(t.param, {})
                t.wd.add_(rule.decay(DecayStep(group, state, t.before, t.prev, t.shadow, t.param.dtype)))
        self.steps_done += 1
        self._row_steps += 1
        if self._row_steps == self.interval:
            torch._foreach_add_(
                [t.total for t in self._tracks],
                [local_tensor(t.param).reshape(-1).to(t.total.dtype) for t in self._tracks],
            )  # θ_end − θ_start
            self._complete_row()

    # ---------------------------------------------------------------- row completion (one sync per row)
    def _complete_row(self) -> None:
        finite = self._row_is_finite().to(torch.float32)
        if self._is_sharded:  # every rank must take the same branch
            finite = self.all_reduce(finite) / dist.get_world_size()
        if float(finite) < 1.0:
            self._reject_row()  # its slot stays the accumulator, which the next row's first step resets
        else:
            slot = self.rows_done % (self.window + 1)
            event = RowEvent(
                self.rows_done, self.steps_done, self._acc_total, self._acc_wd, self._ring_total, self._ring_wd, slot
            )
            for fn in self._listeners:
                fn(event)
            self.rows_done += 1
            self._point_accumulators()
        self._row_steps = 0

    def _row_is_finite(self) -> Tensor:
        """0-dim bool: every entry of the row is finite. A float32 sum is non-finite whenever an entry is (inf and
        NaN propagate), so one reduction pass decides, and only a sum that overflowed is checked entry by entry."""
        quick = torch.isfinite(self._acc_total.sum() + self._acc_wd.sum())
        if bool(quick):
            return quick
        return torch.isfinite(self._acc_total).all() & torch.isfinite(self._acc_wd).all()

    def _reject_row(self) -> None:
        first, last = self.steps_done - self.interval + 1, self.steps_done
        steps = f"optimizer step {last}" if first == last else f"optimizer steps {first}..{last}"
        bad = [
            t.name for t in self._tracks if not (torch.isfinite(t.total).all() and torch.isfinite(t.wd).all())
        ]
        where = f"parameter {bad[0]!r}" if bad else "a parameter sharded on another rank"
        if self.on_nonfinite == "error":
            raise NonFiniteError(
                f"non-finite update of {where} at {steps}: lower the learning rate or use on_nonfinite='skip'"
            )
        self.rows_skipped += 1
        warnings.warn(f"UpdateRecorder dropped a non-finite row ({where}, {steps}); {self.rows_skipped} dropped so far")

    def ring_order(self, rows: int) -> list[int]:
        """Ring slots of the last min(window, rows) rows, oldest→newest."""
        m = min(self.window, rows)
        return [(rows - m + i) % (self.window + 1) for i in range(m)]

    # ---------------------------------------------------------------- Lightning hooks
    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Select the parameters and hook the optimizer that trains them (it exists from fit start)."""
        self.attach(pl_module, trainer.optimizers)

    @override
    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any) -> None:
        """Follow frozen selected parameters into the optimizer once unfrozen; refuse an unselected one unfrozen."""
        if getattr(optimizer, "_optimizer", optimizer) is self._optimizer:
            self.follow_unfrozen()

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Remove the optimizer hooks."""
        self.detach()

    @override
    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        """Remove the optimizer hooks (Lightning runs no teardown after an exception)."""
        self.detach()

    # ---------------------------------------------------------------- checkpointing
    @override
    def state_dict(self) -> dict[str, Any]:
        if self._selection is None:
            return dict(self._pending_state or {})
        order = self.ring_order(self.rows_done)
        mid_row = self._row_steps > 0  # at a row boundary the partial-row buffers hold nothing the next row reads
        return {
            "names": list(self._selection.names),
            "numel": self._selection.numel,
            "interval": self.interval,
            "window": self.window,
            "steps_done": self.steps_done,
            "rows_done": self.rows_done,
            "rows_skipped": self.rows_skipped,
            "row_steps": self._row_steps,
            "rows_total": _to_cpu(self._ring_total[order]),
            "rows_wd": _to_cpu(self._ring_wd[order]),
            "rows_raw": _to_cpu(self._ring_raw[order]) if self._ring_raw is not None else None,
            "neg_row_start": _to_cpu(self._acc_total) if mid_row else None,  # −θ at the start of the partial row
            "acc_wd": _to_cpu(self._acc_wd) if mid_row else None,
            "acc_raw": _to_cpu(self._acc_raw) if mid_row else None,
            "shadow": _to_cpu(self._shadow),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the rows; before ``attach`` the state waits until the buffers exist."""
        if self._selection is None:
            self._pending_state = dict(state_dict)  # applied when attach() has allocated the buffers
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if (state["interval"], state["window"]) != (self.interval, self.window):
            raise ConfigurationError(
                f"checkpoint recorded interval={state['interval']}, window={state['window']} but this UpdateRecorder "
                f"has interval={self.interval}, window={self.window}: use the checkpoint's values to resume"
            )
        if tuple(state["names"]) != self.selection.names or state["numel"] != self.selection.numel:
            raise ConfigurationError("checkpoint's UpdateRecorder selected other parameters: use the same `params` to resume")
        self.steps_done, self.rows_done = state["steps_done"], state["rows_done"]
        self.rows_skipped, self._row_steps = state["rows_skipped"], state["row_steps"]
        self._point_accumulators()
        order = self.ring_order(self.rows_done)
        self._ring_total[order] = state["rows_total"].to(self._ring_total)
        self._ring_wd[order] = state["rows_wd"].to(self._ring_wd)
        if self._ring_raw is not None and state["rows_raw"] is not None:
            self._ring_raw[order] = state["rows_raw"].to(self._ring_raw)
        if state["shadow"] is not None:
            self._ensure_shadow()
        if state.get("neg_row_start") is not None:
            self._acc_total.copy_(state["neg_row_start"])
        elif self._row_steps > 0:  # a checkpoint that summed the partial row's Δθ: −θ_start = Σ Δθ − θ_now
            self._acc_total.copy_(state["acc_total"].to(self._acc_total) - self.flat_params().to(self._acc_total))
        for name in ("acc_wd", "acc_raw"):  # None: saved at a row boundary, where they are zero
            buf = getattr(self, "_" + name)
            if buf is not None:
                buf.copy_(state[name]) if state[name] is not None else buf.zero_()
        if self._shadow is not None and state["shadow"] is not None:
            self._shadow.copy_(state["shadow"])
