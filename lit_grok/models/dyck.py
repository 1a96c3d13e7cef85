"""The Dyck-1 causal encoder of docs/methods.md §2.1: 2 pre-LN blocks (d 128, 4 heads), a depth classifier per token.

Layers are built in the reference's order, so a seeded run draws the same initial weights; both blocks
are deep copies of one layer (identical at init), as ``nn.TransformerEncoder`` makes them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from callbacks import ConfigurationError, ProbeTarget, QueryAttention, sequence_keys
from lit_grok.data.common import IGNORE
from lit_grok.data.sampling import first_copy_counts
from lit_grok.models.common import GrokModule, TokenMetrics, labelled_positions, length_sorted_chunks, masked_cross_entropy
from lit_grok.models.prefix import PrefixBatch, prefix_batch, prefix_self_attention

EVAL_SETS = ("val", "train_eval")  # validation dataloader 0 = test set, 1 = training set
EVAL_CHUNK = 128  # rows per attention chunk of the length-sorted evaluation
PREFIX_ROWS = 1024  # distinct rows per prefix tree of the analyses (lexicographic neighbours share most prefixes)
PREFIX_CHUNK = 64  # rows per attention chunk of a prefix tree (fewer rows: fewer positions before a chunk's queries)


class DyckTransformer(GrokModule):
    """Causal transformer encoder predicting the bracket depth after every token.

    Args:
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay (1.0 groks, 0.0 is the control).
        betas: AdamW betas.
        eps: AdamW epsilon.
        vocab_size: input tokens (``(``, ``)``, PAD).
        n_classes: depth classes (max_pairs + 1).
        d_model: residual width.
        n_heads: attention heads.
        n_layers: encoder blocks.
        d_ff: feed-forward width.
        max_len: rows of the positional embedding (48 in the reference; only the first ctx_len train).
    """

    task_metric = "token_acc"

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        vocab_size: int = 3,
        n_classes: int = 13,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 256,
        max_len: int = 48,
    ) -> None:
        super().__init__(lr, weight_decay, betas, eps)
        if d_model % n_heads:
            raise ConfigurationError(f"model.d_model ({d_model}) must be divisible by model.n_heads ({n_heads})")
        self.save_hyperparameters()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)
        self.metrics = nn.ModuleDict({name: TokenMetrics() for name in EVAL_SETS})

    def forward(self, x: Tensor) -> Tensor:
        # x [B, T] token ids -> logits [B, T, n_classes]
        if not torch.is_grad_enabled():  # inference: nn.TransformerEncoder's fused fast path
            return self.encoder_forward(x)
        h = self.tok_emb(x) + self.pos_emb(torch.arange(x.shape[1], device=x.device))
        for layer in self.encoder.layers:  # encoder_forward's autograd path written out: bit-equal, ~6 % faster
            h = h + layer.dropout1(causal_self_attention(layer.self_attn, layer.norm1(h)))  # pre-LN (norm_first)
            h = h + layer._ff_block(layer.norm2(h))
        return self.head(self.ln_f(h))

    def encoder_forward(self, x: Tensor) -> Tensor:
        """``forward`` through nn.TransformerEncoder itself (the reference's forward): [B, T] -> logits [B, T, n_classes]."""
        T = x.shape[1]
        h = self.tok_emb(x) + self.pos_emb(torch.arange(T, device=x.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=x.device, dtype=h.dtype)
        return self.head(self.ln_f(self.encoder(h, mask=mask, is_causal=True)))

    def prefix_logits(self, batch: PrefixBatch, probs: list[Tensor] | None = None) -> Tensor:
        """Logits [N, n_classes] of every node of ``batch``'s prefix tree: ``forward``'s layers, the position-wise ones
        once per distinct prefix (the causal model gives every position of a prefix the same hidden state).
        ``probs``: a list that gets each block's attention of every node [N, H, K] (``prefix_self_attention``)."""
        h = self.tok_emb(batch.tokens) + self.pos_emb(batch.depth)  # [N, d]
        for layer in self.encoder.layers:  # pre-LN blocks (norm_first, as built above)
            h = h + prefix_self_attention(layer.self_attn, layer.norm1(h), batch, probs)
            h = h + layer._ff_block(layer.norm2(h))
        return self.head(self.ln_f(h))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = masked_cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y, *copies = batch  # [B, T], [B, T], and [B] DyckDataModule's first_copy_counts (else one per row)
        name = EVAL_SETS[dataloader_idx]
        metrics = self.metrics[name]
        counted = bool(copies) and self.whole_loader_pass(dataloader_idx)  # counts need the whole loader
        self.update_distinct(metrics, x, y, copies[0] if counted else torch.ones_like(x[:, 0]))
        self.log(f"{name}/loss", metrics.loss, add_dataloader_idx=False)
        self.log(f"{name}/acc", metrics.acc, add_dataloader_idx=False, prog_bar=name == "val")

    def update_distinct(self, metrics: TokenMetrics, x: Tensor, y: Tensor, weight: Tensor) -> None:
        """Evaluate the rows of weight > 0, longest first in chunks cut after their last label, each counted
        ``weight`` times: the causal model gives every kept position the logits of the padded batch."""
        for rows, T in length_sorted_chunks(y, EVAL_CHUNK, (weight > 0).nonzero().squeeze(1)):
            metrics.update(self(x[rows, :T]), y[rows, :T], weight[rows])

    def whole_loader_pass(self, dataloader_idx: int) -> bool:
        """Whether this evaluation runs every batch of its loader (first-copy counts need all of them)."""
        trainer = self.trainer
        if trainer.sanity_checking:
            return False
        planned, loaders = (trainer.num_test_batches, trainer.test_dataloaders) if trainer.testing else (
            trainer.num_val_batches, trainer.val_dataloaders)
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        return planned[dataloader_idx] == len(loader)

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, 0)

    # --- what the analysis callbacks use (callbacks.utils.protocols) ---
    def labelled_logits(self, batch: tuple[Tensor, ...] | PrefixBatch) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(batch, PrefixBatch):  # from distinct_batches
            return batch.labelled(self.prefix_logits(batch))
        x, y = batch[:2]  # training (x, y) or evaluation (x, y, copies): every row, padded
        return labelled_positions(self(x), y)

    def distinct_batches(self, batches: list[tuple[Tensor, ...]]) -> list[tuple[PrefixBatch, Tensor]]:
        """The distinct rows of ``batches`` with their counts, as prefix trees of up to PREFIX_ROWS lexicographic
        neighbours, rows trimmed after their last label (the causal model gives those positions the logits of the
        padded batch): what the analyses evaluate."""
        x, y, copies, rows = distinct_rows(batches)
        rows = lexicographic(x, rows[(y[rows] != IGNORE).any(1)])  # rows without a label add nothing
        trees = [prefix_batch(x, y, group, PREFIX_CHUNK, self.hparams.n_heads) for group in rows.split(PREFIX_ROWS)]
        return [(tree, copies[tree.order]) for tree in trees]

    def query_batch(self, batches: list[tuple[Tensor, ...]]) -> tuple[PrefixBatch, Tensor]:
        """The padded rows' prefix tree (every position real, padding tokens too) and each of its rows' copies [R]:
        the queries of ``query_attention`` (a causal query's attention depends on its prefix alone)."""
        x, y, copies, rows = distinct_rows(batches)
        tree = prefix_batch(x, y, lexicographic(x, rows), PREFIX_CHUNK, self.hparams.n_heads, whole_rows=True)
        return tree, copies[tree.order]

    @torch.no_grad()
    def query_attention(self, batch: tuple[PrefixBatch, Tensor]) -> QueryAttention:
        """Each block's attention of every distinct query of the padded batches once (the nodes of ``query_batch``'s
        tree), counted by how many of the batches' queries it stands for, and the labelled logits of that forward."""
        tree, row_copies = batch
        probs: list[Tensor] = []
        logits = self.prefix_logits(tree, probs)  # [Q, n_classes]
        counts = torch.zeros(len(tree.tokens), dtype=torch.long, device=row_copies.device)
        counts.index_add_(0, tree.stream, row_copies[tree.row])  # [Q] copies of the rows through each node
        name = {module: name for name, module in self.named_modules()}
        return QueryAttention({name[layer.self_attn]: p for layer, p in zip(self.encoder.layers, probs)}, counts,
                              tree.labelled(logits), row_copies)

    def probe_targets(self, batch: tuple[Tensor, ...]) -> dict[str, ProbeTarget]:
        x, y = batch[:2]
        mask = y != IGNORE
        groups = sequence_keys(x)
        return {"depth": ProbeTarget(values=y.clamp(min=0).float(), mask=mask, categorical=False, groups=groups),
                # +1 for "(" (id 0), -1 for ")" (id 1): the composition test's "token sign" (docs/methods.md §8.2)
                "token_sign": ProbeTarget(values=(1 - 2 * x.clamp(max=1)).float(), mask=mask, categorical=False, groups=groups)}


def causal_self_attention(attn: nn.MultiheadAttention, x: Tensor) -> Tensor:
    """``attn(x, x, x, is_causal=True)`` of a batch-first layer with autograd, nn's own operations in its order (the
    same products over the same [T, B] rows: bit-equal), but q, k, v stay views of the packed projection: its backward
    is one stack, where nn's contiguous copy and three zero-filled selects cost ~6 % of a Dyck training step."""
    B, T, E = x.shape
    H = attn.num_heads
    proj = F.linear(x.transpose(0, 1), attn.in_proj_weight, attn.in_proj_bias)  # [T, B, 3E], nn's row order
    q, k, v = (part.permute(1, 2, 0, 3) for part in proj.view(T, B, 3, H, E // H).unbind(2))  # [B, H, T, E/H] each
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, E/H]
    out = F.linear(out.permute(2, 0, 1, 3).reshape(T * B, E), attn.out_proj.weight, attn.out_proj.bias)  # [T*B, E]
    return out.view(T, B, E).transpose(0, 1)  # [B, T, E]


def lexicographic(x: Tensor, rows: Tensor) -> Tensor:
    """``rows`` [R] sorted by their tokens in ``x`` [N, T], lexicographically (a stable sort per column, last first)."""
    for t in reversed(range(x.shape[1])):
        rows = rows[x[rows, t].argsort(stable=True)]
    return rows


def distinct_rows(batches: list[tuple[Tensor, ...]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x [N, T], y [N, T], copies [N], rows [R]) of ``batches`` laid end to end: each distinct (x, y) row's copies on
    its first occurrence (``first_copy_counts``), and those first occurrences in order."""
    x, y = (torch.cat([batch[i] for batch in batches]) for i in (0, 1))
    copies = first_copy_counts(x, y)
    return x, y, copies, (copies > 0).nonzero().squeeze(1)
