"""A causal model evaluated once per distinct prefix: rows that share their first t tokens share the hidden states of
those t positions, so the position-wise layers run on the nodes of the rows' prefix tree, and only attention reads rows.

The Dyck test set's 2234 distinct rows hold 42,712 labelled-or-earlier positions but only 15,625 distinct prefixes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_grok.data.common import IGNORE


@dataclass
class PrefixBatch:
    """Rows cut into chunks laid end to end in one stream of S positions, each position naming the node (distinct
    prefix) whose hidden state it holds; N nodes, numbered depth by depth. Each node is a query once, in the first of
    the given rows that holds it: a chunk's queries start at the first position one of its rows holds first."""

    tokens: Tensor  # [N] the last token of each node's prefix
    depth: Tensor  # [N] its position (prefix length - 1)
    order: Tensor  # [B] the given rows, in stream order
    stream: Tensor  # [S] the node at each stream position (a padding position repeats its row's last real node)
    targets: Tensor  # [S] the target at each stream position, IGNORE where unlabelled
    row: Tensor  # [S] the row (0..B-1, stream order) of each stream position
    shapes: list[tuple[int, int, int]]  # (rows b, length T, first query position q) per chunk: S = sum of b * T
    heads_in: Tensor  # rows of a node-major [N * 3H, dh] table, chunk by chunk: queries [H, b, T - q], keys and values [2, H, b, T]
    heads_out: Tensor  # [N H] rows of the chunks' query outputs [H, b, T - q] giving each node's heads, node-major

    def labelled(self, node_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits [L, C], targets [L], row [L]) of the stream's labelled positions, from ``node_logits`` [N, C]."""
        keep = self.targets != IGNORE  # [S]
        return node_logits[self.stream[keep]], self.targets[keep], self.row[keep]


def prefix_batch(x: Tensor, y: Tensor, rows: Tensor, chunk_rows: int, n_heads: int, whole_rows: bool = False) -> PrefixBatch:
    """The prefix stream of ``rows`` [B] of ``x`` / ``y`` [B0, T0] (each with a label), for attention of ``n_heads``
    heads in chunks of ``chunk_rows``: a row's real tokens end at its last label, later positions are padding
    (``whole_rows``: every position is real, padding tokens too). A node's query runs in the first row holding it;
    rows in lexicographic order share the most, so each row's own nodes are a short suffix of it."""
    positions = torch.arange(1, y.shape[1] + 1, device=y.device)
    length = (torch.full((len(rows),), y.shape[1], device=y.device) if whole_rows
              else ((y[rows] != IGNORE) * positions).amax(1))  # [B] real tokens of each row
    node, tokens, depth = prefix_nodes(x[rows], length)  # [B, T0], [N], [N]
    B, T0, H = len(rows), y.shape[1], n_heads
    real = positions[None] <= length[:, None]  # [B, T0]
    given = torch.arange(B, device=x.device)[:, None].expand(B, T0)
    first_row = torch.full_like(tokens, B).scatter_reduce_(0, node[real], given[real], "amin")  # [N]
    owned = real & (first_row[node] == given)  # [B, T0]: a suffix of each row's real positions
    start = torch.where(owned.any(1), owned.int().argmax(1), length)  # [B] the row's first own position
    order = (start - length * (T0 + 1)).argsort(stable=True)  # longest first, then the earliest own position
    chunks = order.split(chunk_rows)
    lengths = length[order[::chunk_rows]].tolist()  # a chunk's first row is its longest
    firsts = torch.stack([start[chunk].min() for chunk in chunks]).tolist()  # its first query position
    heads = torch.arange(H, device=x.device)[:, None, None]  # [H, 1, 1]
    stream, targets, row, heads_in = [], [], [], []
    heads_out = torch.empty(len(tokens), H, dtype=torch.long, device=x.device)
    begin, offset = 0, 0  # the chunk's first row (stream order) and first output row
    for chunk, T, q in zip(chunks, lengths, firsts):
        b, nodes = len(chunk), node[chunk, :T]  # [b, T]
        stream.append(nodes.flatten())
        targets.append(y[rows[chunk], :T].flatten())
        row.append(torch.arange(begin, begin + b, device=x.device).repeat_interleave(T))
        heads_in += [(nodes[None, :, q:] * 3 * H + heads).flatten(),  # [H b (T - q)] query heads
                     (nodes[None] * 3 * H + H + torch.arange(2 * H, device=x.device)[:, None, None]).flatten()]  # [2H b T]
        out_rows = offset + torch.arange(H * b * (T - q), device=x.device).view(H, b, T - q).permute(1, 2, 0)  # [b, T-q, H]
        own = owned[chunk, q:T]  # [b, T - q]
        heads_out[nodes[:, q:][own]] = out_rows[own]
        begin, offset = begin + b, offset + H * b * (T - q)
    return PrefixBatch(tokens, depth, rows[order], torch.cat(stream), torch.cat(targets), torch.cat(row),
                       list(zip([len(c) for c in chunks], lengths, firsts)), torch.cat(heads_in), heads_out.flatten())


def prefix_nodes(x: Tensor, length: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Number the distinct prefixes of rows ``x`` [B, T] (token ids >= 0) with ``length`` [B] real tokens: (node of
    every position [B, T] (padding: the row's last real node), last token [N], depth [N]), numbered depth by depth."""
    B, T = x.shape
    vocab = int(x.max()) + 1
    node = torch.zeros(B, T, dtype=torch.long, device=x.device)
    parent = torch.full((B,), -1, dtype=torch.long, device=x.device)  # [B] node of the prefix before position t
    tokens, depth, count = [], [], 0
    for t in range(int(length.max())):
        live = length > t  # [B] rows with a real token at t
        key = (parent[live] + 1) * vocab + x[live, t]  # [b]: (parent, token) names the prefix
        distinct, inverse = torch.unique(key, return_inverse=True)  # [n], [b]
        parent[live] = count + inverse
        node[:, t] = parent
        tokens.append(distinct % vocab)
        depth.append(torch.full((len(distinct),), t, dtype=torch.long, device=x.device))
        count += len(distinct)
    node[:, int(length.max()):] = parent[:, None]
    return node, torch.cat(tokens), torch.cat(depth)


def prefix_self_attention(attn: nn.MultiheadAttention, x: Tensor, batch: PrefixBatch,
                          probs: list[Tensor] | None = None) -> Tensor:
    """Causal self-attention [N, D] of the nodes ``x`` [N, D]: one input and one output projection over the nodes,
    attention over every chunk's rows, each node a query once. ``probs``: a list that gets each node's attention
    [N, H, K] over the positions 0..K-1 of its row (0 past its own; K the longest chunk)."""
    H, (N, D) = attn.num_heads, x.shape
    dh = D // H
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # [N, 3D]
    streamed = qkv.view(N * 3 * H, dh).index_select(0, batch.heads_in)  # chunk by chunk: [H b (T-q) + 2 H b T, dh]
    done = []  # ([H b, T - q, dh], [H b, T - q, T]) per chunk
    for block, (b, T, q) in zip(streamed.split([H * b * (3 * T - q) for b, T, q in batch.shapes]), batch.shapes):
        queries, keys_values = block.split([H * b * (T - q), 2 * H * b * T])
        done.append(attend(queries.view(H * b, T - q, dh), *keys_values.view(2, H * b, T, dh), q))
    heads = torch.cat([out.flatten(0, 1) for out, _ in done]).index_select(0, batch.heads_out)  # [N H, dh]
    if probs is not None:
        K = max(T for _, T, _ in batch.shapes)
        rows = torch.cat([F.pad(p, (0, K - p.shape[-1])).flatten(0, 1) for _, p in done])  # [query rows, K]
        probs.append(rows.index_select(0, batch.heads_out).view(N, H, K))
    return attn.out_proj(heads.view(N, D))


def attend(q: Tensor, k: Tensor, v: Tensor, first: int) -> tuple[Tensor, Tensor]:
    """Causal softmax attention of queries ``q`` [B, M, dh] at positions first..first+M-1 over keys ``k`` and values
    ``v`` [B, T, dh] at 0..T-1: (outputs [B, M, dh], attention probabilities [B, M, T])."""
    M, T, dh = q.shape[1], k.shape[1], q.shape[-1]
    future = torch.full((M, T), float("-inf"), dtype=q.dtype, device=q.device).triu(first + 1)  # [M, T]
    weights = torch.baddbmm(future, q, k.transpose(1, 2), alpha=dh ** -0.5).softmax(-1)  # [B, M, T]
    return weights @ v, weights
