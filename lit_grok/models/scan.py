"""The SCAN encoder-decoder of spec §2.2: nn.Transformer (d 256, 4 heads, 3+3 pre-LN layers) + an extra LN.

As in the reference, training and evaluation pass no memory padding mask, so cross-attention also
sees padded source positions; ``memory_padding_mask=True`` is the corrected variant.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from callbacks import ConfigurationError, ProbeTarget, sequence_keys
from lit_grok.models.common import IGNORE, GrokModule, TokenMetrics, labelled_positions, masked_cross_entropy

PAD, SOS, EOS = 0, 1, 2
EVAL_SETS = ("val", "train_eval")  # validation dataloader 0 = test-eval subset, 1 = training subset
Batch = tuple[Tensor, Tensor, Tensor]  # src [B, S], tgt_in [B, T], tgt_out [B, T]


def causal_mask(T: int, device: torch.device) -> Tensor:
    """[T, T] bool, True above the diagonal (future positions are masked)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).triu(1)


class ScanTransformer(GrokModule):
    """Encoder-decoder mapping SCAN commands to action sequences, trained teacher-forced.

    Args:
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay (1.0 groks, 0.0 is the control).
        betas: AdamW betas.
        eps: AdamW epsilon.
        src_vocab_size: command tokens incl. PAD/SOS/EOS (must equal the data's).
        tgt_vocab_size: action tokens incl. PAD/SOS/EOS (must equal the data's).
        max_src_len: source positions.
        max_tgt_len: target positions.
        d_model: residual width.
        n_heads: attention heads.
        n_layers: encoder layers and decoder layers (each).
        d_ff: feed-forward width.
        memory_padding_mask: mask padded source positions in cross-attention (the reference did not).
        greedy_eval: also decode the test-eval set free-running (greedy exact match, ``val/greedy_acc``).
    """

    task_metric = "seq_acc"

    def __init__(
        self,
        lr: float = 1e-4,
        weight_decay: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        src_vocab_size: int = 16,
        tgt_vocab_size: int = 9,
        max_src_len: int = 11,
        max_tgt_len: int = 50,
        d_model: int = 256,
        n_heads: int = 4,
        n_layers: int = 3,
        d_ff: int = 512,
        memory_padding_mask: bool = False,
        greedy_eval: bool = True,
    ) -> None:
        super().__init__(lr, weight_decay, betas, eps)
        if d_model % n_heads:
            raise ConfigurationError(f"model.d_model ({d_model}) must be divisible by model.n_heads ({n_heads})")
        self.save_hyperparameters()
        self.src_tok = nn.Embedding(src_vocab_size, d_model)
        self.src_pos = nn.Embedding(max_src_len, d_model)
        self.tgt_tok = nn.Embedding(tgt_vocab_size, d_model)
        self.tgt_pos = nn.Embedding(max_tgt_len, d_model)
        with warnings.catch_warnings():  # nested tensors are off for pre-LN layers anyway
            warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
            self.transformer = nn.Transformer(
                d_model, n_heads, n_layers, n_layers, d_ff, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True,
            )
        self.ln_out = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, tgt_vocab_size)
        self.metrics = nn.ModuleDict({name: TokenMetrics(tgt_vocab_size) for name in EVAL_SETS})
        self.seq_acc = nn.ModuleDict({name: MeanMetric() for name in EVAL_SETS})
        self.greedy_acc = MeanMetric()

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        for name in ("src_vocab_size", "tgt_vocab_size", "max_src_len", "max_tgt_len"):
            if dm is not None and hasattr(dm, name) and getattr(dm, name) != self.hparams[name]:
                raise ConfigurationError(f"model.{name}={self.hparams[name]} but the data has {getattr(dm, name)}; set model.{name}: {getattr(dm, name)}")

    def encode(self, src: Tensor) -> Tensor:
        # src [B, S] -> memory [B, S, D] (after the encoder's final LN)
        h = self.src_tok(src) + self.src_pos(torch.arange(src.shape[1], device=src.device))
        return self.transformer.encoder(h, src_key_padding_mask=src == PAD)

    def decode(self, tgt_in: Tensor, memory: Tensor, src: Tensor) -> Tensor:
        # tgt_in [B, T], memory [B, S, D] -> logits [B, T, V]
        T = tgt_in.shape[1]
        h = self.tgt_tok(tgt_in) + self.tgt_pos(torch.arange(T, device=tgt_in.device))
        h = self.transformer.decoder(
            h, memory, tgt_mask=causal_mask(T, h.device), tgt_key_padding_mask=tgt_in == PAD, tgt_is_causal=True,
            memory_key_padding_mask=(src == PAD) if self.hparams.memory_padding_mask else None,
        )
        return self.head(self.ln_out(h))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(tgt_in, self.encode(src), src)

    @torch.no_grad()
    def greedy_decode(self, src: Tensor, max_len: int | None = None) -> Tensor:
        """Free-running argmax decoding: [B, S] -> generated action ids [B, max_len] (EOS included)."""
        max_len = max_len or self.hparams.max_tgt_len - 1
        memory = self.encode(src)
        ys = torch.full((src.shape[0], 1), SOS, dtype=torch.long, device=src.device)
        for _ in range(max_len):
            next_tok = self.decode(ys, memory, src)[:, -1].argmax(-1, keepdim=True)
            ys = torch.cat([ys, next_tok], dim=1)
            if bool((ys == EOS).any(1).all()):
                break
        return ys[:, 1:]

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        src, tgt_in, tgt_out = batch
        loss = masked_cross_entropy(self(src, tgt_in), tgt_out)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        src, tgt_in, tgt_out = batch
        name = EVAL_SETS[dataloader_idx]
        logits = self(src, tgt_in)
        self.metrics[name].update(logits, tgt_out)
        labelled = tgt_out != IGNORE
        seq_ok = ((logits.argmax(-1) == tgt_out) | ~labelled).all(1)
        self.seq_acc[name].update(seq_ok.float())
        self.log(f"{name}/loss", self.metrics[name].loss, add_dataloader_idx=False)
        self.log(f"{name}/acc", self.metrics[name].acc, add_dataloader_idx=False)
        self.log(f"{name}/seq_acc", self.seq_acc[name], add_dataloader_idx=False, prog_bar=name == "val")
        if name == "val" and self.hparams.greedy_eval:
            self.greedy_acc.update(greedy_exact_match(self.greedy_decode(src, tgt_out.shape[1]), tgt_out).float())
            self.log("val/greedy_acc", self.greedy_acc, add_dataloader_idx=False)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, 0)

    # --- what the analysis callbacks use (callbacks.utils.protocols) ---
    def labelled_logits(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        src, tgt_in, tgt_out = batch
        return labelled_positions(self(src, tgt_in), tgt_out)

    def probe_targets(self, batch: Batch) -> dict[str, ProbeTarget]:
        src, tgt_in, tgt_out = batch
        groups = sequence_keys(src)
        return {
            # decoder positions [B, T]: the gold action token
            "token": ProbeTarget(values=tgt_out.clamp(min=0), mask=tgt_out != IGNORE, categorical=True, groups=groups),
            # encoder positions [B, S]: the command token (its mask marks the non-pad source positions)
            "source": ProbeTarget(values=src, mask=src != PAD, categorical=True, groups=groups),
        }


def greedy_exact_match(generated: Tensor, tgt_out: Tensor) -> Tensor:
    """[B] bool: the generated ids up to and including the first EOS equal the gold targets (EOS included)."""
    gold_len = (tgt_out != IGNORE).sum(1)  # actions + EOS
    T = min(generated.shape[1], tgt_out.shape[1])
    gen, gold = generated[:, :T], tgt_out[:, :T]
    pos = torch.arange(T, device=gen.device)[None]
    within = pos < gold_len[:, None]
    return ((gen == gold) | ~within).all(1) & (gold_len <= T)
