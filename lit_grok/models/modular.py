"""The modular-addition transformer of docs/methods.md §2.3: token + positional embedding (d 128), pre-LN encoder
blocks with ``nn.MultiheadAttention``, a final LayerNorm and a p-way head read at the ``=`` position.

Besides the metrics, every validation logs the Fourier spectrum of the residue embedding W_E [p, d] along its token
axis (docs/methods.md §10.5): a grokked model concentrates it on a few key frequencies.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from callbacks import ConfigurationError, ProbeTarget, sequence_keys
from callbacks.functional.fourier_attention import summarize_spectrum, token_axis_power
from lit_grok.models.common import GrokModule, TokenMetrics

EVAL_SETS = ("val", "train_eval")  # validation dataloader 0 = held-out pairs, 1 = training pairs
SEQ_LEN = 3  # a, b, =


class ModularTransformer(GrokModule):
    """Bidirectional transformer encoder over [a, b, =] predicting (a + b) mod p at the last position.

    Logs ``{val,train_eval}/{loss,acc}`` and ``embed/fourier_{top1,top3,top5,omega_star}`` (the centred token-axis
    power of W_E; top-k = share of the k strongest of the p // 2 non-DC frequencies).

    Args:
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay (1.0 groks, 0.0 is the control).
        betas: AdamW betas.
        eps: AdamW epsilon.
        p: the modulus; the vocabulary is the p residues and ``=`` (id p), the head has p classes.
        d_model: residual width.
        n_heads: attention heads.
        n_layers: encoder blocks.
        d_ff: feed-forward width.
    """

    task_metric = "token_acc"  # one labelled token per sequence: token and sequence accuracy coincide

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        p: int = 97,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 1,
        d_ff: int = 512,
    ) -> None:
        super().__init__(lr, weight_decay, betas, eps)
        if p < 2:
            raise ConfigurationError(f"model.p must be >= 2 (and equal data.p), got {p}")
        if d_model % n_heads:
            raise ConfigurationError(f"model.d_model ({d_model}) must be divisible by model.n_heads ({n_heads})")
        if n_layers < 1 or d_ff < 1:
            raise ConfigurationError(f"model.n_layers and model.d_ff must be >= 1, got {n_layers}, {d_ff}")
        self.save_hyperparameters()
        self.tok_emb = nn.Embedding(p + 1, d_model)
        self.pos_emb = nn.Embedding(SEQ_LEN, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout=0.0, activation="relu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, p)
        self.metrics = nn.ModuleDict({name: TokenMetrics() for name in EVAL_SETS})

    def setup(self, stage: str) -> None:
        """The head and vocabulary must be the data's: one line naming both settings otherwise."""
        super().setup(stage)
        data_p = getattr(getattr(self.trainer, "datamodule", None), "hparams", {}).get("p")
        if data_p is not None and data_p != self.hparams.p:
            raise ConfigurationError(f"model.p ({self.hparams.p}) must equal data.p ({data_p})")

    def forward(self, x: Tensor) -> Tensor:
        # x [B, 3] token ids -> logits [B, p] at the `=` position
        if x.shape[1] != SEQ_LEN:
            raise ValueError(f"ModularTransformer takes [B, {SEQ_LEN}] inputs (a, b, =), got {tuple(x.shape)}")
        h = self.tok_emb(x) + self.pos_emb(torch.arange(SEQ_LEN, device=x.device))  # [B, 3, D]
        h = self.encoder(h)
        return self.head(self.ln_f(h)[:, -1])  # ln_f on every position: its output [B, 3, D] aligns with the probe targets

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch  # [B, 3], [B]
        name = EVAL_SETS[dataloader_idx]
        metrics = self.metrics[name]
        metrics.update(self(x)[:, None], y[:, None])  # one labelled position per row
        self.log(f"{name}/loss", metrics.loss, add_dataloader_idx=False)
        self.log(f"{name}/acc", metrics.acc, add_dataloader_idx=False, prog_bar=name == "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, 0)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        summary = summarize_spectrum(self.embedding_power())
        for key in ("top1", "top3", "top5", "omega_star"):
            self.log(f"embed/fourier_{key}", float(getattr(summary, key)))

    def embedding_power(self) -> Tensor:
        """[p // 2 + 1] float64: power of the residue embedding W_E [p, d] per frequency along the residue axis."""
        return token_axis_power(self.tok_emb.weight.detach()[: self.hparams.p])

    # --- what the analysis callbacks use (callbacks.utils.protocols) ---
    def labelled_logits(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch[:2]  # [B, 3], [B]: one labelled token (the answer) per sequence
        return self(x), y, torch.arange(len(y), device=y.device)

    def probe_targets(self, batch: tuple[Tensor, ...]) -> dict[str, ProbeTarget]:
        """``a``, ``b`` and ``answer`` (class ids) at the ``=`` position of hidden states [B, 3, D]."""
        x, y = batch[:2]
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[:, -1] = True  # [B, 3]: the position that predicts the answer
        groups = sequence_keys(x)  # every pair is distinct: one group per pair
        at_last = lambda v: v[:, None].expand_as(x)  # noqa: E731  [B] -> [B, 3]
        return {name: ProbeTarget(values=at_last(v), mask=mask, categorical=True, groups=groups)
                for name, v in (("a", x[:, 0]), ("b", x[:, 1]), ("answer", y))}
