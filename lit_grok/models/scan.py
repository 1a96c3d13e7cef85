"""The SCAN encoder-decoder of docs/methods.md §2.2: nn.Transformer (d 256, 4 heads, 3+3 pre-LN layers) + an extra LN.

As in the reference, training and evaluation pass no memory padding mask, so cross-attention also
sees padded source positions; ``memory_padding_mask=True`` is the corrected variant.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from callbacks import ConfigurationError, ProbeTarget, sequence_keys
from lit_grok.data.common import IGNORE
from lit_grok.models.common import GrokModule, TokenMetrics, labelled_positions, length_sorted_chunks

PAD, SOS, EOS = 0, 1, 2
EVAL_SETS = ("val", "train_eval")  # validation dataloader 0 = test-eval subset, 1 = training subset
Batch = tuple[Tensor, Tensor, Tensor]  # src [B, S], tgt_in [B, T], tgt_out [B, T]
TRAIN_CHUNK = 32  # rows per attention chunk of the packed training loss
EVAL_CHUNK = 64  # rows per attention chunk of the packed teacher-forced evaluation
GREEDY_MARGIN = 1.0  # a teacher-forced top logit this far ahead is greedy decoding's choice too (rounding is far smaller)


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
        greedy_eval: also score free-running greedy decoding on the test-eval set (exact match, ``val/greedy_acc``;
            ``greedy_matches`` decodes only the rows its teacher-forced logits leave open).
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
        self.metrics = nn.ModuleDict({name: TokenMetrics() for name in EVAL_SETS})
        self.seq_acc = nn.ModuleDict({name: MeanMetric() for name in EVAL_SETS})
        self.greedy_acc = MeanMetric()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        for name in ("src_vocab_size", "tgt_vocab_size", "max_src_len", "max_tgt_len"):
            if dm is not None and hasattr(dm, name) and getattr(dm, name) != self.hparams[name]:
                raise ConfigurationError(f"model.{name}={self.hparams[name]} but the data has {getattr(dm, name)}; set model.{name}: {getattr(dm, name)}")

    def encode(self, src: Tensor) -> Tensor:
        # src [B, S] -> memory [B, S, D] (after the encoder's final LN), through the encoder's modules (hookable)
        return self.transformer.encoder(self.source_embedding(src), src_key_padding_mask=src == PAD)

    def source_embedding(self, src: Tensor) -> Tensor:
        # src [B, S] -> [B, S, D]
        return self.src_tok(src) + self.src_pos(torch.arange(src.shape[1], device=src.device))

    def packed_encode(self, src: Tensor) -> Tensor:
        """``encode`` written out layer by layer (pre-LN nn.TransformerEncoderLayer), its attention by ``attention``:
        [B, S] -> memory [B, S, D], in fp32 equal to ``encode`` (gradients to rounding); no module hooks fire."""
        h, keep = self.source_embedding(src), (src != PAD)[:, None, None]  # [B, S, D], [B, 1, 1, S]
        for layer in self.transformer.encoder.layers:
            qkv = F.linear(layer.norm1(h), layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias)  # [B, S, 3 D]
            attended = attention(*qkv.unflatten(-1, (3, self.hparams.n_heads, -1)).permute(2, 0, 3, 1, 4), keep)  # [B, H, S, dh]
            h = h + layer.self_attn.out_proj(merge_heads(attended))
            h = h + layer._ff_block(layer.norm2(h))
        return self.transformer.encoder.norm(h)

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
        """Free-running argmax decoding: [B, S] -> generated action ids [B, L <= max_len], each row up to and
        including its first EOS, PAD after it; stops once every row has emitted EOS."""
        return self.greedy_steps(src, max_len)[0]

    @torch.no_grad()
    def greedy_steps(self, src: Tensor, max_len: int | None = None) -> tuple[Tensor, Tensor]:
        """(ids [B, L], logits [B, L, V]) of greedy decoding, one new position per step: each decoder layer
        keeps its self-attention keys/values and the encoder memory's, the same weights as ``decode``. A row
        stops at its first EOS (later positions: PAD ids, NaN logits); finished rows leave the batch once they
        are an eighth of it, so the work follows the rows still decoding."""
        max_len = max_len or self.hparams.max_tgt_len - 1
        B, H, V = src.shape[0], self.hparams.n_heads, self.hparams.tgt_vocab_size
        memory = self.encode(src)  # [B, S, D]
        memory_keep = (src != PAD)[:, None, None] if self.hparams.memory_padding_mask else None  # [B, 1, 1, S]
        layers = self.transformer.decoder.layers
        cross = [kv_heads(layer.multihead_attn, memory, H) for layer in layers]  # per layer ([B, H, S, dh],) * 2
        cache = [memory.new_empty(2, B, H, max_len, memory.shape[-1] // H) for _ in layers]  # K/V [B, H, L, dh]
        key_keep = torch.empty(B, 1, 1, max_len, dtype=torch.bool, device=src.device)  # non-PAD inputs
        token = torch.full((B,), SOS, dtype=torch.long, device=src.device)  # [A] input of this step
        rows = torch.arange(B, device=src.device)  # [A] the batch row of each row still in the batch
        done = torch.zeros(B, dtype=torch.bool, device=src.device)  # [A] emitted its EOS
        ids = torch.full((B, max_len), PAD, dtype=torch.long, device=src.device)
        logits = memory.new_full((B, max_len, V), float("nan"))
        for t in range(max_len):
            h = (self.tgt_tok(token) + self.tgt_pos.weight[t])[:, None]  # [A, 1, D]
            key_keep[..., t] = (token != PAD)[:, None, None]  # decode masks PAD inputs as keys
            for layer, kv, (k_mem, v_mem) in zip(layers, cache, cross):
                h = h + self_attention_step(layer.self_attn, layer.norm1(h), kv, t, key_keep[..., : t + 1], H)
                q = heads(F.linear(layer.norm2(h), *q_projection(layer.multihead_attn)), H)  # [A, H, 1, dh]
                attended = attention(q, k_mem, v_mem, memory_keep)
                h = h + layer.multihead_attn.out_proj(merge_heads(attended))
                h = h + layer._ff_block(layer.norm3(h))
            step_logits = self.head(self.ln_out(self.transformer.decoder.norm(h)))[:, 0]  # [A, V]
            token = step_logits.argmax(-1)
            live = ~done  # rows decoding this position
            ids[rows[live], t], logits[rows[live], t] = token[live], step_logits[live].to(logits.dtype)
            done |= token == EOS
            finished = int(done.sum())  # one host sync per step
            if finished == len(rows):
                return ids[:, : t + 1], logits[:, : t + 1]
            if 8 * finished >= len(rows):  # drop the finished rows: their later positions are never read
                keep = ~done
                rows, token, done, key_keep = rows[keep], token[keep], done[keep], key_keep[keep]
                cross = [(k[keep], v[keep]) for k, v in cross]
                cache = [compact_cache(kv, keep, t + 1) for kv in cache]
                memory_keep = memory_keep[keep] if memory_keep is not None else None
        return ids, logits

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self.length_sorted_loss(*batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def length_sorted_loss(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
        """The batch's token-mean cross-entropy from the packed length-sorted decoder (``packed_logits``):
        the causal decoder gives every labelled position the logits of the padded batch (same gradient)."""
        logits, targets, _ = self.packed_logits(src, tgt_in, tgt_out, TRAIN_CHUNK)  # [N, V], [N]
        return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum") / (tgt_out != IGNORE).sum()

    def packed_logits(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
        """(logits [N, V], targets [N], batch row [N]) of the teacher-forced decoder over length-sorted chunks of ``chunk`` rows,
        each cut after its last label and laid end to end in one [N, D] stream: the position-wise layers run once
        on all N positions, attention per chunk (a view of the stream). For every labelled position the logits
        are the padded batch's: the causal mask alone already hides the padding keys (padding only trails)."""
        memory = self.packed_encode(src)  # [B, S, D]: source padding stays, cross-attention sees it (reference)
        chunks = length_sorted_chunks(tgt_out, chunk)
        rows = torch.cat([r for r, _ in chunks])  # [B'] the rows in stream order
        shapes = [(len(r), T) for r, T in chunks]
        tokens = torch.cat([tgt_in[r, :T].flatten() for r, T in chunks])  # [N]
        targets = torch.cat([tgt_out[r, :T].flatten() for r, T in chunks])  # [N]
        positions = torch.cat([torch.arange(T, device=src.device).repeat(b) for b, T in shapes])  # [N]
        sequence = torch.cat([r.repeat_interleave(T) for r, T in chunks])  # [N]
        memory = memory[rows]  # [B', S, D] row j = the stream's j-th row
        memory_keep = (src[rows] != PAD)[:, None, None] if self.hparams.memory_padding_mask else None  # [B', 1, 1, S]
        H = self.hparams.n_heads
        h = self.tgt_tok(tokens) + self.tgt_pos(positions)  # [N, D]
        for layer in self.transformer.decoder.layers:  # pre-LN decoder layer (nn.TransformerDecoderLayer, norm_first)
            h = h + packed_self_attention(layer.self_attn, layer.norm1(h), shapes, H)
            h = h + packed_cross_attention(layer.multihead_attn, layer.norm2(h), memory, memory_keep, shapes, H)
            h = h + layer._ff_block(layer.norm3(h))
        return self.head(self.ln_out(self.transformer.decoder.norm(h))), targets, sequence

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = EVAL_SETS[dataloader_idx]
        self.update_eval_metrics(name, *batch)
        self.log(f"{name}/loss", self.metrics[name].loss, add_dataloader_idx=False)
        self.log(f"{name}/acc", self.metrics[name].acc, add_dataloader_idx=False)
        self.log(f"{name}/seq_acc", self.seq_acc[name], add_dataloader_idx=False, prog_bar=name == "val")
        if name == "val" and self.hparams.greedy_eval:
            self.log("val/greedy_acc", self.greedy_acc, add_dataloader_idx=False)

    def update_eval_metrics(self, name: str, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> None:
        """Teacher-forced metrics of eval set ``name`` from the packed length-sorted decoder (the padded batch's
        logits at every label), and on "val" greedy exact match (``greedy_matches``)."""
        logits, targets, sequence = self.packed_logits(src, tgt_in, tgt_out, EVAL_CHUNK)  # [N, V], [N], [N]
        self.metrics[name].update(logits, targets)
        wrong = (logits.argmax(-1) != targets) & (targets != IGNORE)  # [N]: a sequence is right without any
        misses = torch.zeros(len(src), device=src.device).index_add_(0, sequence, wrong.float())  # [B]
        self.seq_acc[name].update((misses == 0).float())
        if name == "val" and self.hparams.greedy_eval:
            self.greedy_acc.update(self.greedy_matches(src, tgt_in, tgt_out, logits, targets, sequence).float())

    def greedy_matches(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor, logits: Tensor, targets: Tensor,
                       sequence: Tensor) -> Tensor:
        """[B] bool: greedy decoding's exact match per row, given the packed teacher-forced stream (``packed_logits``:
        ``logits`` [N, V], ``targets`` [N], each position's row ``sequence`` [N]). While greedy decoding is right, its
        prefix is the gold one, so it sees these logits: where their top one leads by GREEDY_MARGIN at every position
        up to the first wrong one (or at all), it picks the same tokens and the row's answer is read off; the other
        rows, and rows whose decoder inputs were not the gold prefix, are decoded."""
        labelled = targets != IGNORE
        top = logits.topk(2, dim=-1).values  # [N, 2]
        wrong = labelled & (logits.argmax(-1) != targets)
        unsure = labelled & (top[:, 0] - top[:, 1] < GREEDY_MARGIN)
        N, where = len(targets), torch.arange(len(targets), device=src.device)
        first_wrong = torch.full_like(tgt_out[:, 0], N).scatter_reduce_(0, sequence[wrong], where[wrong], "amin")  # [B]
        first_unsure = torch.full_like(tgt_out[:, 0], N + 1).scatter_reduce_(0, sequence[unsure], where[unsure], "amin")
        teacher = torch.where(tgt_out == IGNORE, PAD, tgt_out).roll(1, 1)  # [B, T] the gold prefix as decoder inputs
        teacher[:, 0] = SOS
        gold_inputs = ((teacher == tgt_in) | (tgt_out == IGNORE)).all(1)  # teacher forcing fed the gold prefix
        decided = gold_inputs & (first_unsure > first_wrong)
        match = decided & (first_wrong == N)
        if not decided.all():
            rows = (~decided).nonzero().squeeze(1)
            match[rows] = greedy_exact_match(self.greedy_decode(src[rows], tgt_out.shape[1]), tgt_out[rows])
        return match

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


def attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None = None, causal: bool = False) -> Tensor:
    """softmax(q kᵀ / √dh) v [B, H, Lq, dh] of q [B, H, Lq, dh], k, v [B, H, Lk, dh]; ``keep`` [B, 1, 1, Lk] (False hides
    a key) or None, ``causal`` hides later keys (Lq = Lk). SDPA's kernel, except under CPU autocast (``precision:
    bf16-mixed``): there explicit products, autocast's bf16 matmuls around an fp32 softmax, because the fused CPU
    kernel's bf16 backward is slow and its math kernel copies everything to fp32 and back."""
    if not (q.device.type == "cpu" and torch.is_autocast_enabled("cpu")):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=causal)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # [B, H, Lq, Lk] bf16
    if causal:
        scores = scores.masked_fill(causal_mask(q.shape[-2], q.device), float("-inf"))
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    return scores.softmax(-1) @ v  # autocast: softmax in fp32, the product in bf16


def heads(x: Tensor, n_heads: int) -> Tensor:
    """[B, L, D] -> [B, H, L, D / H]."""
    return x.unflatten(-1, (n_heads, -1)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, L, dh] -> [B, L, H * dh]."""
    return x.transpose(1, 2).flatten(2)


def q_projection(attn: nn.MultiheadAttention) -> tuple[Tensor, Tensor]:
    """The query rows (weight [D, D], bias [D]) of a packed ``in_proj``."""
    D = attn.embed_dim
    return attn.in_proj_weight[:D], attn.in_proj_bias[:D]


def kv_heads(attn: nn.MultiheadAttention, x: Tensor, n_heads: int) -> tuple[Tensor, Tensor]:
    """Keys and values [B, H, L, dh] of ``attn`` for the positions ``x`` [B, L, D]."""
    D = attn.embed_dim
    k, v = F.linear(x, attn.in_proj_weight[D:], attn.in_proj_bias[D:]).chunk(2, -1)  # [B, L, D] each
    return heads(k, n_heads), heads(v, n_heads)


def self_attention_step(attn: nn.MultiheadAttention, x: Tensor, kv: Tensor, t: int, key_keep: Tensor, n_heads: int) -> Tensor:
    """Causal self-attention output [B, 1, D] of position ``t`` (input ``x`` [B, 1, D]): stores its key and value
    in ``kv`` [2, B, H, L, dh] at ``t``, attends over positions 0..t where ``key_keep`` [B, 1, 1, t + 1]."""
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)  # [B, 1, D] each
    kv[0, :, :, t], kv[1, :, :, t] = heads(k, n_heads)[:, :, 0], heads(v, n_heads)[:, :, 0]
    out = attention(heads(q, n_heads), kv[0, :, :, : t + 1], kv[1, :, :, : t + 1], key_keep)
    return attn.out_proj(merge_heads(out))


def packed_self_attention(attn: nn.MultiheadAttention, x: Tensor, shapes: list[tuple[int, int]], n_heads: int) -> Tensor:
    """Causal self-attention [N, D] of a stream ``x`` [N, D] of chunks, chunk i = ``shapes[i]`` (rows b, length T)
    laid out row-major: one input and one output projection over the stream, attention per chunk."""
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # [N, 3 D]
    out = [attention(*block.unflatten(-1, (3, n_heads, -1)).permute(2, 0, 3, 1, 4), causal=True)
           for block in chunk_views(qkv, shapes)]  # [b, H, T, dh] each
    return attn.out_proj(torch.cat([merge_heads(o).flatten(0, 1) for o in out]))


def packed_cross_attention(attn: nn.MultiheadAttention, x: Tensor, memory: Tensor, memory_keep: Tensor | None,
                           shapes: list[tuple[int, int]], n_heads: int) -> Tensor:
    """Cross-attention [N, D] of a chunk stream ``x`` [N, D] to ``memory`` [B', S, D] (row j = the stream's j-th row),
    ``memory_keep`` [B', 1, 1, S] or None (the reference attends to every source position). Keys and values are
    split per chunk (one concatenation in the backward, not a zero-filled [B', H, S, dh] gradient per chunk)."""
    q = F.linear(x, *q_projection(attn))  # [N, D]
    k, v = kv_heads(attn, memory, n_heads)  # [B', H, S, dh]
    rows_per_chunk = [b for b, _ in shapes]
    keeps = [None] * len(shapes) if memory_keep is None else memory_keep.split(rows_per_chunk)  # [b, 1, 1, S] each
    out = [attention(heads(block, n_heads), k_chunk, v_chunk, keep)
           for block, k_chunk, v_chunk, keep in zip(chunk_views(q, shapes), k.split(rows_per_chunk), v.split(rows_per_chunk), keeps)]
    return attn.out_proj(torch.cat([merge_heads(o).flatten(0, 1) for o in out]))


def chunk_views(stream: Tensor, shapes: list[tuple[int, int]]) -> list[Tensor]:
    """[N, C] -> the chunks as views [b, T, C], chunk i = ``shapes[i]`` = (b, T), N = sum of b * T."""
    return [block.unflatten(0, shape) for block, shape in zip(stream.split([b * T for b, T in shapes]), shapes)]


def compact_cache(kv: Tensor, keep: Tensor, filled: int) -> Tensor:
    """K/V cache [2, A, H, L, dh] -> [2, A', H, L, dh] of the rows ``keep`` [A], copying the ``filled`` positions."""
    out = kv.new_empty(2, int(keep.sum()), *kv.shape[2:])
    out[..., :filled, :] = kv[:, keep, :, :filled]
    return out


def greedy_exact_match(generated: Tensor, tgt_out: Tensor) -> Tensor:
    """[B] bool: the generated ids up to and including the first EOS equal the gold targets (EOS included)."""
    gold_len = (tgt_out != IGNORE).sum(1)  # actions + EOS
    T = min(generated.shape[1], tgt_out.shape[1])
    gen, gold = generated[:, :T], tgt_out[:, :T]
    pos = torch.arange(T, device=gen.device)[None]
    within = pos < gold_len[:, None]
    return ((gen == gold) | ~within).all(1) & (gold_len <= T)
