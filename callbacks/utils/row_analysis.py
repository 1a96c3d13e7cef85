"""The per-row analyses of an UpdateRecorder, and the one Gram window they all read.

The data path of a row, top to bottom in this file and the analysis's own: inside the optimizer hook
(device work, no host sync) the ``GramWindow`` and each analysis take the inner products they need from the new
row (``RowAnalysis.row_products``, named fields, accumulated in float64 by ``inner64``); later (host work, float64) ``GramWindow.process`` borders
G = X Xᵀ with the row, solves the window once and hands the resulting ``WindowRow`` to every analysis
(``RowAnalysis.absorb`` turns it into scalars, tagged with the recorder's name if it has one); ``publish``
labels them with the recorder's step (``UpdateRecorder.step_label``: trainer.global_step with one optimizer) and
logs them on rank zero, and keeps the latest values and an optional history.
"""
from __future__ import annotations

import math
import os
import weakref
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from typing_extensions import override

from ..functional.gram_spectrum import append_gram, window_spectrum
from ..update_recorder import RowEvent, UpdateRecorder
from ..utils.errors import ConfigurationError
from ..utils.param_selection import local_tensor

LAYOUT_CATEGORY = "spectral edge"
Products = dict[str, Tensor]


CHUNK = 1 << 20  # entries of P per float64 block: bounds inner64's scratch to [.., CHUNK] float64
ROW_CHUNK = 1 << 13  # entries of P per block of row_inner64: its float64 scratch, 2(W + 1) + 1 rows of it, stays in L2
RINGS = ("ring_total", "ring_wd")  # [window + 1, P] operands of a row product: row r in slot r % (window + 1)
VECTORS = ("total", "wd", "theta")  # [P] operands: the new row, its decay part, θ when the row completed
ROW_OF = {"total": "ring_total", "wd": "ring_wd"}  # the new row's vectors are its slot of these rings
Pair = tuple[str, str]  # (RINGS or VECTORS name, VECTORS name): a named inner product of a row


def inner64(a: Tensor, b: Tensor) -> Tensor:
    """a @ b accumulated in float64, a [..., P] · b [P] -> [...] (float32 sums over P ≈ 10⁶ lose ~10⁻⁴ relative on
    the small σ_k), over blocks of CHUNK entries so the float64 copies stay small."""
    out = a.new_zeros(a.shape[:-1], dtype=torch.float64)
    for start in range(0, a.shape[-1], CHUNK):
        stop = start + CHUNK
        out += a[..., start:stop].to(torch.float64) @ b[start:stop].to(torch.float64)
    return out


class FlatPieces:
    """The concatenation of flat tensors [n_i] (θ from the parameters), read in blocks without materialising it."""

    def __init__(self, pieces: list[Tensor]) -> None:
        self.pieces = pieces

    def split(self, size: int) -> list[Tensor]:
        """Consecutive blocks of ``size`` entries (the last one shorter), like ``Tensor.split``: views, but for a
        block that straddles two pieces."""
        blocks, carry = [], []  # carry: the parts of a block begun in earlier pieces
        for piece in self.pieces:
            have = sum(t.numel() for t in carry)
            head = min(size - have, piece.numel()) if carry else 0
            if carry:
                carry.append(piece[:head])
                if have + head < size:
                    continue
                blocks.append(torch.cat(carry))
                carry = []
            whole = (piece.numel() - head) // size * size
            if whole:
                blocks.extend(piece[head : head + whole].split(size))
            if head + whole < piece.numel():
                carry = [piece[head + whole :]]
        if carry:
            blocks.append(torch.cat(carry) if len(carry) > 1 else carry[0])
        return blocks


def row_inner64(rings: dict[str, Tensor], slot: int, theta: Any, pairs: list[Pair]) -> dict[Pair, Tensor]:
    """Every requested product a · b in one pass over P, accumulated in float64 like ``inner64``: a ring [S, P]
    (-> [S], every slot) or a vector [P] (-> 0-dim) times a vector. The new row's vectors are its ring slot
    (``total`` = ring_total[slot], ``wd`` = ring_wd[slot]), so a vector product is read off a ring product at the slot
    where one is computed anyway; θ is a Tensor or ``FlatPieces`` (None when no pair reads it). Each float32 entry is
    read from memory once and converted to float64 in cache-sized blocks of ROW_CHUNK entries (docs/methods.md §4.8);
    the loop over blocks only copies and multiplies views laid out before it (at P ≈ 10⁷ it runs ~10³ times)."""
    wanted = sorted({(a, b) for a, b in pairs if a in rings})  # (ring, column) matrix-vector products

    def at_slot(a: str, b: str) -> Optional[Pair]:
        for u, v in ((a, b), (b, a)):
            if u in ROW_OF and (ROW_OF[u], v) in wanted:
                return ROW_OF[u], v
        return None

    dots = sorted({tuple(sorted((a, b))) for a, b in pairs if a not in rings and at_slot(a, b) is None})
    names = sorted({b for _, b in wanted} | {x for d in dots for x in d})  # vectors read
    full = sorted({r for r, _ in wanted})  # rings read whole
    own = [u for u in names if ROW_OF.get(u) not in full]  # vectors copied on their own (θ, a slot of an unread ring)
    source = {"theta": theta, **{u: rings[r][slot] for u, r in ROW_OF.items()}}
    n, dev = rings["ring_total"].shape[1], rings["ring_total"].device
    chunk = min(ROW_CHUNK, n)
    sources = [rings[r].split(chunk, dim=1) for r in full] + [source[u].split(chunk) for u in own]  # float32 blocks
    scratch = [torch.empty(rings[r].shape[0], chunk, dtype=torch.float64, device=dev) for r in full]  # [S, chunk]
    scratch += [torch.empty(chunk, dtype=torch.float64, device=dev) for _ in own]  # [chunk]
    ring_acc = {pair: torch.zeros(rings[pair[0]].shape[0], dtype=torch.float64, device=dev) for pair in wanted}
    dot_acc = {pair: torch.zeros(1, dtype=torch.float64, device=dev) for pair in dots}

    def layout(width: int) -> tuple[list[Tensor], list[tuple[Any, Tensor, Tensor]]]:
        """The float64 blocks of ``width`` entries, and every product as (accumulator's addmv_, matrix, vector) on them."""
        blocks = [b[..., :width] for b in scratch]
        block = dict(zip(full + own, blocks))
        vec = {u: block[ROW_OF[u]][slot] if u not in own else block[u] for u in names}
        products = [(ring_acc[(r, b)].addmv_, block[r], vec[b]) for r, b in wanted]
        products += [(dot_acc[(a, b)].addmv_, vec[a][None], vec[b]) for a, b in dots]  # a · b as a [1, width] matvec
        return blocks, products

    blocks, products = layout(chunk)
    for parts in zip(*sources):
        if parts[0].shape[-1] != chunk:  # the last, shorter block
            blocks, products = layout(parts[0].shape[-1])
        for block, part in zip(blocks, parts):
            block.copy_(part)
        for addmv_, matrix, vector in products:
            addmv_(matrix, vector)
    out: dict[Pair, Tensor] = {}
    for a, b in pairs:
        read_off = None if a in rings else at_slot(a, b)
        if a in rings:
            out[(a, b)] = ring_acc[(a, b)]
        elif read_off is not None:
            out[(a, b)] = ring_acc[read_off][slot]
        else:
            out[(a, b)] = dot_acc[tuple(sorted((a, b)))][0]
    return out


def reduce_products(recorder: UpdateRecorder, products: Products) -> Products:
    """Named products summed over ranks in one collective when the recorder's selection is sharded (else the
    same values)."""
    flat = recorder.all_reduce(torch.cat([t.reshape(-1) for t in products.values()]))
    pieces = flat.split([t.numel() for t in products.values()])
    return {name: piece.view_as(t) for (name, t), piece in zip(products.items(), pieces)}


def to_host(products: Products) -> Products:
    return {name: t.detach().to("cpu", torch.float64) for name, t in products.items()}


@dataclass
class WindowRow:
    """The Gram window as of one completed row: what every analysis reads."""

    index: int  # 0-based row number
    steps: int  # optimizer steps recorded when the row completed
    gram: Tensor  # [m+1, m+1] float64: X Xᵀ of the m <= window previous rows and this one, oldest→newest
    order: list[int]  # ring slots of those m previous rows, oldest→newest (to read ring-indexed products)
    xx: float  # ‖x‖² of the new row
    size: int  # w = min(window, index + 1): rows in the window ending at this row
    sigma: Tensor  # [w] float64, descending (empty when w < 2)
    u: Tensor  # [w, w]: column k is u_k, v_k = Xᵀu_k / σ_k

    def oldest_first(self, ring_products: Tensor) -> Tensor:
        """Products with the ring's slots [window] → the m previous rows, oldest→newest."""
        return ring_products[self.order]


class GramWindow:
    """G = X Xᵀ of a recorder's last window + 1 rows (the extra row gives the previous window), kept once per
    recorder and solved once per row, for every analysis bound to that recorder."""

    _of: "weakref.WeakKeyDictionary[UpdateRecorder, GramWindow]" = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, recorder: UpdateRecorder) -> "GramWindow":
        """The recorder's window, made (and hooked to its rows) on first use."""
        if recorder not in cls._of:
            cls._of[recorder] = cls(recorder)
        return cls._of[recorder]

    def __init__(self, recorder: UpdateRecorder) -> None:
        self.recorder = recorder
        self.readers: list[RowAnalysis] = []
        self.rows_seen = 0
        self._gram = torch.zeros(0, 0, dtype=torch.float64)
        self._pending: deque[tuple[int, int, Products]] = deque()
        self._latest: Optional[WindowRow] = None
        recorder.add_row_listener(self._on_row)

    def subscribe(self, reader: "RowAnalysis") -> None:
        if reader not in self.readers:
            self.readers.append(reader)

    PAIRS: dict[str, Pair] = {"ring_x": ("ring_total", "total"), "xx": ("total", "total")}

    def _on_row(self, event: RowEvent) -> None:
        """Device work in the optimizer hook: the inner products the window and every reader need from the new row,
        in one pass over P (``row_inner64``) and one collective, queued for ``process``."""
        requests = [self.PAIRS] + [reader.row_pairs() for reader in self.readers]
        pairs = list(dict.fromkeys(pair for request in requests for pair in request.values()))
        theta = None
        if any("theta" in pair for pair in pairs):
            theta = FlatPieces([local_tensor(p).reshape(-1) for p in self.recorder.selection.params])
        values = row_inner64({"ring_total": event.ring_total, "ring_wd": event.ring_wd}, event.slot, theta, pairs)
        named = [{name: values[pair] for name, pair in request.items()} for request in requests]
        for products, reader in zip(named[1:], self.readers):
            products.update(reader.row_products(event))
        reduced = reduce_products(self.recorder, {f"{i}/{k}": t for i, p in enumerate(named) for k, t in p.items()})
        named = [{k: reduced[f"{i}/{k}"] for k in p} for i, p in enumerate(named)]
        self._pending.append((event.index, event.steps, named[0]))
        for products, reader in zip(named[1:], self.readers):
            reader._queue_row(event.index, products)

    def process(self) -> None:
        """Host work: border G with each pending row, solve the window, hand the row to every reader in order."""
        while self._pending:
            index, steps, products = self._pending.popleft()
            p = to_host(products)
            W = self.recorder.window
            order = self.recorder.ring_order(index)  # slots of the previous rows, oldest→newest
            self._gram = append_gram(self._gram, p["ring_x"][order], p["xx"], keep=W + 1)
            size = min(W, index + 1)
            sigma, u = self._solve(size)
            row = WindowRow(index, steps, self._gram, order, float(p["xx"]), size, sigma, u)
            self.rows_seen, self._latest = index + 1, row
            for reader in self.readers:
                reader._absorb_row(row)

    def _solve(self, size: int) -> tuple[Tensor, Tensor]:
        if size < 2:
            empty = torch.zeros(0, dtype=torch.float64)
            return empty, empty.reshape(0, 0)
        return window_spectrum(self._gram[-size:, -size:])

    def spectrum(self) -> tuple[int, Tensor, Tensor]:
        """(w, σ [w], U [w, w]) of the window ending at the latest completed row (w = 0 before two rows)."""
        self.process()
        size = min(self.recorder.window, self.rows_seen)
        if size < 2:
            return 0, *self._solve(0)
        if self._latest is None or self._latest.index + 1 != self.rows_seen:  # restored from a checkpoint
            self._latest = WindowRow(self.rows_seen - 1, -1, self._gram, [], math.nan, size, *self._solve(size))
        return size, self._latest.sigma, self._latest.u

    def state_dict(self) -> dict[str, Any]:
        self.process()
        return {"rows": self.rows_seen, "gram": self._gram.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows_seen, self._gram = state["rows"], state["gram"].to(torch.float64)
        self._pending.clear()
        self._latest = None


class RowAnalysis(Callback, ABC):
    """Base class of the analyses of each completed row: named products of the row → (later, with the shared
    ``WindowRow``) scalars → loggers, ``latest`` and an optional ``.npz`` history.

    Subclasses implement ``row_products`` (device) and ``absorb`` (host); ``custom_scalar_charts`` and the
    ``_analysis_state`` pair are optional.
    """

    def __init__(self, top_k: int = 5, history_path: Optional[str] = None, recorder: Optional[str] = None) -> None:
        if not isinstance(top_k, int) or top_k < 1:
            raise ConfigurationError(f"top_k must be an integer >= 1 (directions to report), got {top_k!r}")
        if recorder is not None and (not isinstance(recorder, str) or not recorder):
            raise ConfigurationError(f"recorder must be the name of an UpdateRecorder or None (the only one), got {recorder!r}")
        self.top_k = top_k
        self.recorder = recorder
        self.history_path = history_path
        self._recorder: Optional[UpdateRecorder] = None
        self._window: Optional[GramWindow] = None
        self._restored_window: Optional[dict[str, Any]] = None
        self._trainer: Optional[pl.Trainer] = None
        self._rows_seen = 0  # rows turned into scalars
        self._pending: deque[tuple[int, Products]] = deque()  # (row index, products on device)
        self._unpublished: list[tuple[int, dict]] = []  # (step, metrics) not yet logged
        self._history: list[tuple[int, dict]] = []  # logged (step, metrics), kept when history_path is set
        self._latest: dict[str, float] = {}
        self._last_step: Optional[int] = None
        self._last_logged_step: Optional[int] = None

    # ---------------------------------------------------------------- for subclasses
    def row_pairs(self) -> dict[str, Pair]:
        """Named inner products this analysis needs from each new row beyond the window's, as (operand, vector) of
        ``RINGS`` / ``VECTORS`` names (e.g. ``{"x_theta": ("total", "theta")}``): the window computes every
        analysis's pairs in one float64 pass over P."""
        return {}

    def row_products(self, event: RowEvent) -> Products:
        """Other products of the new row (device tensors, no host sync), for what ``row_pairs`` cannot name."""
        return {}

    @abstractmethod
    def absorb(self, row: WindowRow, products: Products) -> dict[str, float]:
        """Update the small host state with ``row`` and this analysis's ``products`` of it (float64, summed over
        ranks) and return the row's scalars."""

    def custom_scalar_charts(self) -> dict[str, list]:
        """TensorBoard multiline charts, ``{title: ["Multiline", [tags]]}``."""
        return {}

    def _analysis_state(self) -> dict[str, Any]:
        return {}

    def _load_analysis_state(self, state: dict[str, Any]) -> None:
        pass

    @property
    @override
    def state_key(self) -> str:
        """The class name, with the recorder's name when one is given (one analysis of a kind per recorder)."""
        return super().state_key if self.recorder is None else self._generate_state_key(recorder=self.recorder)

    @property
    def bound_recorder(self) -> Optional[UpdateRecorder]:
        """The UpdateRecorder whose rows this analysis reads (None before ``bind``)."""
        return self._recorder

    # ---------------------------------------------------------------- wiring
    def bind(self, recorder: UpdateRecorder, trainer: Optional["pl.Trainer"] = None) -> None:
        """Read ``recorder``'s Gram window and rows; with a trainer, rows are labelled by trainer.global_step."""
        if self.top_k > recorder.window:
            raise ConfigurationError(
                f"{type(self).__name__}(top_k={self.top_k}) exceeds UpdateRecorder(window={recorder.window}): "
                "lower top_k or raise window"
            )
        self._recorder, self._trainer = recorder, trainer
        self._window = GramWindow.of(recorder)
        self._window.subscribe(self)
        if self._restored_window is not None:
            self._window.load_state_dict(self._restored_window)
            self._restored_window = None

    def _queue_row(self, index: int, products: Products) -> None:
        """Called by the window in the optimizer hook: this analysis's products of row ``index`` (summed over ranks)."""
        if index != self._rows_seen + len(self._pending):
            raise RuntimeError(
                f"{type(self).__name__} has seen {self._rows_seen + len(self._pending)} rows but the UpdateRecorder "
                f"is at row {index}: restore both from the same checkpoint"
            )
        self._pending.append((index, products))

    def _absorb_row(self, row: WindowRow) -> None:
        """Called by the window, in row order: this analysis's scalars of ``row``, labelled by its global step."""
        if not self._pending or self._pending[0][0] > row.index:
            return  # a row completed before this analysis was bound
        index, products = self._pending.popleft()
        metrics = {self._recorder.tag(k): v for k, v in self.absorb(row, to_host(products)).items()}
        self._rows_seen = index + 1
        step = self._recorder.step_label(row.steps, self._trainer)
        self._unpublished.append((step, metrics))
        self._latest, self._last_step = metrics, step

    def _process(self) -> None:
        if self._window is not None:
            self._window.process()
    @property
    def latest(self) -> dict[str, float]:
        """Scalars of the latest completed row (the logged names, e.g. ``edge/sigma_1``, ``edge/<name>/sigma_1``
        for a named recorder)."""
        self._process()
        return dict(self._latest)

    @property
    def last_step(self) -> Optional[int]:
        """The step the latest row was logged at (``UpdateRecorder.step_label``; None before the first row)."""
        self._process()
        return self._last_step

    def publish(self, trainer: Optional["pl.Trainer"] = None) -> list[tuple[int, dict]]:
        """Turn pending rows into scalars, log them (rank zero of ``trainer``) and return them as (step, metrics).

        Like Lightning's own logging, loggers get at most one row per ``trainer.log_every_n_steps`` steps
        (the first row completing in each such span); ``latest`` and the ``.npz`` history keep every row.
        """
        self._process()
        out, self._unpublished = self._unpublished, []
        if trainer is not None and trainer.is_global_zero:
            every = max(1, trainer.log_every_n_steps)
            for step, metrics in out:
                if self._last_logged_step is not None and step // every <= self._last_logged_step // every:
                    continue
                self._last_logged_step = step
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=step)
        if self.history_path is not None:
            self._history.extend(out)
        return out

    def save_history(self, path: str) -> None:
        """Every logged scalar vs step: ``name -> float64 [n, 2]`` (columns step, value) in one ``.npz``."""
        names = sorted({name for _, metrics in self._history for name in metrics})
        arrays = {
            name: np.array([(s, m[name]) for s, m in self._history if name in m], dtype=np.float64).reshape(-1, 2)
            for name in names
        }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        np.savez(path, **arrays)

    # ---------------------------------------------------------------- Lightning hooks
    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Bind to the trainer's UpdateRecorder named ``recorder`` (None: its only one) before training (its rows
        start at fit start)."""
        self.bind(UpdateRecorder.find(trainer, self.recorder), trainer)

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """The first analysis writes one TensorBoard custom-scalar layout for all of them."""
        analyses = [cb for cb in trainer.callbacks if isinstance(cb, RowAnalysis)]
        if not trainer.is_global_zero or analyses[0] is not self:
            return  # the first analysis writes one layout for all of them
        charts: dict[str, list] = {}
        for cb in analyses:
            rec = cb._recorder
            for title, (kind, tags) in cb.custom_scalar_charts().items():
                named = title if rec is None or rec.name is None else f"{title} ({rec.name})"
                charts[named] = [kind, [rec.tag(t) if rec is not None else t for t in tags]]
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and charts:
                logger.experiment.add_custom_scalars({LAYOUT_CATEGORY: charts})

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", *args: Any) -> None:
        """Log the rows that completed in this batch."""
        self.publish(trainer)

    @override
    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Log the last rows and write the ``.npz`` history."""
        self.publish(trainer)
        if self.history_path is not None and trainer.is_global_zero:
            path = self.history_path
            if not os.path.isabs(path):
                path = os.path.join(trainer.log_dir or trainer.default_root_dir, path)
            self.save_history(path)

    # ---------------------------------------------------------------- checkpointing
    @override
    def state_dict(self) -> dict[str, Any]:
        self._process()
        window = self._window.state_dict() if self._window is not None else self._restored_window
        return {
            "window": window,
            "rows_seen": self._rows_seen,
            "unpublished": list(self._unpublished),
            "history": list(self._history),
            "latest": dict(self._latest),
            "last_step": self._last_step,
            "last_logged_step": self._last_logged_step,
            **self._analysis_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = deque()
        self._restored_window = state_dict.get("window")
        if self._restored_window is None and "gram" in state_dict:  # a checkpoint from before the shared window
            self._restored_window = {"rows": state_dict["rows_seen"], "gram": state_dict["gram"]}
        if self._window is not None and self._restored_window is not None:
            self._window.load_state_dict(self._restored_window)
            self._restored_window = None
        self._rows_seen = state_dict["rows_seen"]
        self._unpublished = list(state_dict["unpublished"])
        self._history = list(state_dict["history"])
        self._latest, self._last_step = dict(state_dict["latest"]), state_dict["last_step"]
        self._last_logged_step = state_dict["last_logged_step"]
        self._load_analysis_state(state_dict)
