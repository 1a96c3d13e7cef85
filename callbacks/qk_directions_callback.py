"""Singular directions of the query and key projections of attention layers, and where the Gram edge sits on
them, at scheduled steps (docs/methods.md §10.4).

Reads the weights only: no forward pass. The edge v_k comes from the ``GramSpectrum`` of the ``UpdateRecorder``
selection, restricted to each layer's ``in_proj_weight`` and reshaped to its [W_Q; W_K; W_V] matrices.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from typing_extensions import override

from .functional.qk_directions import direction_overlaps, head_forms, query_key, top_singular
from .update_recorder import UpdateRecorder
from .utils.causal import SPECTRUM_HINT
from .utils.errors import ConfigurationError, DirectionUnavailable
from .utils.hidden_states import attention_modules
from .utils.param_selection import Block
from .utils.protocols import DirectionSource
from .utils.results import unavailable, write_results
from .utils.schedule import ScheduledCallback
from .utils.trainer import find, log_scalars

MATRICES = ("q", "k", "qk")  # W_Q, W_K and W_Qᵀ W_K (summed over heads)


class QKDirectionsCallback(ScheduledCallback):
    """Top singular values and vectors of W_Q, W_K and W_Qᵀ W_K of each attention module, and the overlap of the
    Gram directions v_k (restricted to that module, reshaped) with those singular pairs, at scheduled steps.

    For v_k's blocks B_Q, B_K of the module's ``in_proj_weight`` (and the first-order change of the QK form,
    B_Qᵀ W_K + W_Qᵀ B_K), reports ‖B‖_F, the overlaps |⟨B̂, u_i v_iᵀ⟩| and the shares of ‖B‖² inside the top-r
    singular spaces. Logs ``qk_directions/{alias}/{q,k,qk}/sigma{i}`` and ``qk_directions/{alias}/v{k}/{q,k,qk}/
    {block_norm, overlap1, subspace_share}``; keeps ``results`` (vectors included) and writes them to JSON.

    Args:
        modules: ``nn.MultiheadAttention`` module names, {alias: name}, or None for every one in the model.
        steps: optimizer steps after which to measure.
        after_grok: offsets after the grok step (needs a ``GrokDetector``).
        top: singular pairs kept per matrix (the reference's 5).
        per_head: also the singular values of each head's W_{Q,h}ᵀ W_{K,h}.
        edge_directions: 1-indexed Gram directions to overlap ([]: none, and no recorder is needed).
        json_path: where to write ``results`` at fit end; default ``{log_dir}/qk_directions.json``
            (``qk_directions_{i}.json`` for the i-th further QKDirectionsCallback of the trainer).

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import GramSpectrum, QKDirectionsCallback, UpdateRecorder

        qk = QKDirectionsCallback(modules={"L1": "encoder.layers.1.self_attn"}, steps=[600, 5000], per_head=True)
        trainer = Trainer(callbacks=[UpdateRecorder(interval=100), GramSpectrum(), qk])
        # after trainer.fit(model): qk.results, also in {log_dir}/qk_directions.json
    """

    def __init__(
        self,
        modules: list[str] | dict[str, str] | None = None,
        steps: list[int] = [],
        after_grok: list[int] = [],
        top: int = 5,
        per_head: bool = False,
        edge_directions: list[int] = [1],
        json_path: str | None = None,
    ) -> None:
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ConfigurationError(f"QKDirectionsCallback: top must be an integer >= 1, got {top!r}")
        ks = list(edge_directions)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks) or len(set(ks)) != len(ks):
            raise ConfigurationError(f"QKDirectionsCallback: edge_directions must be distinct integers >= 1, got {ks}")
        super().__init__(steps, after_grok)
        self.modules = None if modules is None else (dict(modules) if isinstance(modules, dict) else {n: n for n in modules})
        if self.modules is not None and not self.modules:
            raise ConfigurationError("QKDirectionsCallback: give at least one module name, or None for every attention module")
        self.top = top
        self.per_head = per_head
        self.edge_directions = ks
        self.json_path = json_path

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(modules=self.modules, top=self.top, edge_directions=self.edge_directions)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Find the attention modules (and, for edge overlaps, the recorder, the spectrum and each in_proj_weight's
        block in the selection) before the first step."""
        names = None if self.modules is None else list(self.modules.values())
        found = attention_modules(pl_module, names, "QKDirectionsCallback")
        aliases = {name: name for name in found} if self.modules is None else self.modules
        self._attention = {alias: found[name] for alias, name in aliases.items()}
        for alias, m in self._attention.items():
            if m.in_proj_weight is None:
                raise ConfigurationError(f"QKDirectionsCallback: {alias!r} has separate q/k/v projections (kdim/vdim != "
                                         "embed_dim); only a packed in_proj_weight is supported")
        self._aliases = aliases
        self._blocks: dict[str, Block] = {}
        if self.edge_directions:
            self._recorder = UpdateRecorder.find(trainer)
            self._spectrum = find(trainer, DirectionSource, SPECTRUM_HINT, "GramSpectrum")
            try:
                self._find_blocks()  # fails before training when the recorder has already made its selection
            except RuntimeError:
                pass  # the recorder comes later in the callback list: checked at the first measurement

    def _find_blocks(self) -> None:
        """Each module's in_proj_weight block in the recorder's selection (a ConfigurationError if one is missing)."""
        blocks = {b.name: b for b in self._recorder.selection.blocks}
        for alias, name in self._aliases.items():
            if f"{name}.in_proj_weight" not in blocks:
                raise ConfigurationError(f"QKDirectionsCallback: the UpdateRecorder does not select {name}.in_proj_weight; "
                                         "select it (e.g. params='attn_weights') or set edge_directions=[]")
            self._blocks[alias] = blocks[f"{name}.in_proj_weight"]

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        """One record per attention module."""
        edge: dict[int, Tensor | str] = {}
        if self.edge_directions and not self._blocks:
            self._find_blocks()
        for k in self.edge_directions:
            try:
                edge[k] = self._spectrum.directions([k])[0].detach().double().cpu()  # [P]
            except DirectionUnavailable as err:
                edge[k] = str(err)
        records, metrics = [], {}
        for alias, m in self._attention.items():
            record = self._module_record(alias, m.in_proj_weight.detach().double().cpu(), m.num_heads, edge)
            records.append(record)
            metrics.update(self._scalars(record))
        log_scalars(trainer, metrics)
        return records

    def _module_record(self, alias: str, in_proj: Tensor, heads: int, edge: dict[int, Tensor | str]) -> dict[str, Any]:
        w_q, w_k = query_key(in_proj)
        mats = {"q": w_q, "k": w_k, "qk": w_q.T @ w_k}
        svd = {name: top_singular(mat, self.top) for name, mat in mats.items()}
        record: dict[str, Any] = {"module": alias, "heads": heads}
        for name, (u, s, vt) in svd.items():
            record[name] = {"singular_values": s.tolist(), "left": u.T.tolist(), "right": vt.tolist()}
        record["qk_right_alignment"] = (svd["q"][2] @ svd["k"][2].T).abs().tolist()  # |cos(v_i^Q, v_j^K)| [r, r]
        if self.per_head:
            forms = head_forms(w_q, w_k, heads)  # [H, d, d]
            record["head_singular_values"] = [torch.linalg.svdvals(f)[: self.top].tolist() for f in forms]
        record["edge"] = {}
        for k, v in edge.items():
            if isinstance(v, str):
                record["edge"][f"v{k}"] = {name: unavailable(v, ("block_norm", "subspace_share", "left_share", "right_share"),
                                                             overlaps=[float("nan")] * self.top) for name in MATRICES}
                continue
            b = self._blocks[alias]
            b_q, b_k = query_key(v[b.offset : b.offset + b.numel].view(b.shape))
            blocks = {"q": b_q, "k": b_k, "qk": b_q.T @ w_k + w_q.T @ b_k}  # qk: first-order change of W_Qᵀ W_K
            record["edge"][f"v{k}"] = {name: {"status": "ok", **direction_overlaps(blocks[name], svd[name][0], svd[name][2])}
                                       for name in MATRICES}
        return record

    @staticmethod
    def _scalars(record: dict[str, Any]) -> dict[str, float]:
        alias, out = record["module"], {}
        for name in MATRICES:
            for i, s in enumerate(record[name]["singular_values"], start=1):
                out[f"qk_directions/{alias}/{name}/sigma{i}"] = s
        for vk, by_matrix in record["edge"].items():
            for name, e in by_matrix.items():
                out[f"qk_directions/{alias}/{vk}/{name}/block_norm"] = e["block_norm"]
                out[f"qk_directions/{alias}/{vk}/{name}/overlap1"] = e["overlaps"][0]
                out[f"qk_directions/{alias}/{vk}/{name}/subspace_share"] = e["subspace_share"]
        return out

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write every result to JSON (rank zero)."""
        if trainer.is_global_zero:
            payload = {"modules": self.modules, "top": self.top, "edge_directions": self.edge_directions,
                       "results": self.results}
            write_results(trainer, self, self.json_path, "qk_directions", payload)
