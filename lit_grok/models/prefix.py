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
    """Rows cut into length-sorted chunks laid end to end in one stream of S positions, each position naming the node
    (distinct prefix) whose hidden state it holds; N nodes, numbered depth by depth."""

    tokens: Tensor  # [N] the last token of each node's prefix
    depth: Tensor  # [N] its position (prefix length - 1)
    stream: Tensor  # [S] the node at each stream position (a padding position repeats its row's last real node)
    targets: Tensor  # [S] the target at each stream position, IGNORE where unlabelled
    row: Tensor  # [S] the row (0..B-1, stream order) of each stream position
    shapes: list[tuple[int, int]]  # (rows b, length T) per chunk: S = sum of b * T
    heads_in: Tensor  # [3 H S] rows of a node-major [N * 3H, dh] table laid out chunk by chunk as [3, H, b, T]
    heads_out: Tensor  # [N H] rows of those [H, b, T] chunk outputs giving each node's heads, node-major

    def labelled(self, node_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits [L, C], targets [L], row [L]) of the stream's labelled positions, from ``node_logits`` [N, C]."""
        keep = self.targets != IGNORE  # [S]
        return node_logits[self.stream[keep]], self.targets[keep], self.row[keep]


def prefix_batch(x: Tensor, y: Tensor, chunks: list[tuple[Tensor, int]], n_heads: int, whole_rows: bool = False) -> PrefixBatch:
    """The prefix stream of rows ``x`` / ``y`` [B0, T0] taken as ``chunks`` ((row indices [b], length), as
    ``length_sorted_chunks`` gives them), for attention of ``n_heads`` heads: a row's real tokens end at its last
    label, later positions are padding; ``whole_rows``: every position of a chunk is real (padding tokens too)."""
    order = torch.cat([rows for rows, _ in chunks])  # [B] rows in stream order
    positions = torch.arange(1, y.shape[1] + 1, device=y.device)
    length = (torch.cat([torch.full((len(rows),), T, device=y.device) for rows, T in chunks]) if whole_rows
              else ((y[order] != IGNORE) * positions).amax(1))  # [B] real tokens of each row
    node, tokens, depth = prefix_nodes(x[order], length)  # [B, T0], [N], [N]
    H, start, offset = n_heads, 0, 0  # offset: where the chunk's [3, H, b, T] block starts in the head layout
    stream, targets, row, real, heads_in, heads_at = [], [], [], [], [], []
    for rows, T in chunks:
        b = len(rows)
        nodes = node[start:start + b, :T]  # [b, T]
        stream.append(nodes.flatten())
        targets.append(y[rows, :T].flatten())
        row.append(torch.arange(start, start + b, device=x.device).repeat_interleave(T))
        real.append((positions[:T] <= length[start:start + b, None]).flatten())
        j = torch.arange(3 * H, device=x.device)[:, None, None]  # [3H, 1, 1] the q, k, v heads of a node's row
        heads_in.append((nodes[None] * 3 * H + j).flatten())  # [3H b T]
        heads_at.append(offset + torch.arange(H * b * T, device=x.device).view(H, b * T).t())  # [b T, H] output rows
        start, offset = start + b, offset + H * b * T
    stream, real = torch.cat(stream), torch.cat(real)  # [S]
    where = torch.arange(len(stream), device=x.device)
    first = torch.full_like(tokens, len(stream)).scatter_reduce_(0, stream[real], where[real], "amin")  # [N]
    return PrefixBatch(tokens, depth, stream, torch.cat(targets), torch.cat(row), [(len(rows), T) for rows, T in chunks],
                       torch.cat(heads_in), torch.cat(heads_at)[first].flatten())


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
    attention over every chunk's rows (each node's output read at one of its stream positions). ``probs``: a list
    that gets each node's attention [N, H, K] over the positions 0..K-1 of its row (0 past its own; K the longest chunk)."""
    H, (N, D) = attn.num_heads, x.shape
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # [N, 3D]
    streamed = qkv.view(N * 3 * H, D // H).index_select(0, batch.heads_in)  # [3 H S, dh], chunk by chunk [3, H, b, T]
    done = [attend(*block.view(3, H * b, T, -1)) for block, (b, T) in
            zip(streamed.split([3 * H * b * T for b, T in batch.shapes]), batch.shapes)]  # ([H b, T, dh], [H b, T, T]) each
    heads = torch.cat([out.flatten(0, 1) for out, _ in done]).index_select(0, batch.heads_out)  # [N H, dh]
    if probs is not None:
        K = max(T for _, T in batch.shapes)
        rows = torch.cat([F.pad(p, (0, K - p.shape[-1])).flatten(0, 1) for _, p in done])  # [H S, K] chunk by chunk
        probs.append(rows.index_select(0, batch.heads_out).view(N, H, K))
    return attn.out_proj(heads.view(N, D))


def attend(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Causal softmax attention of queries ``q`` over keys ``k`` and values ``v`` [B, T, dh]: (outputs [B, T, dh],
    attention probabilities [B, T, T])."""
    T, dh = q.shape[-2:]
    future = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)  # [T, T]
    weights = torch.baddbmm(future, q, k.transpose(1, 2), alpha=dh ** -0.5).softmax(-1)  # [B, T, T]
    return weights @ v, weights
