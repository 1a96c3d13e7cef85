"""The prefix tree of a causal model's rows: one node per distinct prefix, and logits equal to the padded forward's."""
import pytest
import torch

from lit_grok.callbacks.utils.evaluation import evaluate, evaluation_of
from lit_grok.data.common import IGNORE
from lit_grok.models.dyck import DyckTransformer
from lit_grok.models.prefix import prefix_batch, prefix_nodes


def rows_with_shared_prefixes(n: int = 60, T: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows (PAD = 2 after each row's length) sharing prefixes, and depth-like targets on the real tokens."""
    g = torch.Generator().manual_seed(seed)
    stems = torch.randint(0, 2, (4, T), generator=g)
    x = stems[torch.randint(0, 4, (n,), generator=g)]
    cut = torch.randint(0, T, (n,), generator=g)  # rows share the stem up to cut, then go their own way
    tails = torch.randint(0, 2, (n, T), generator=g)
    x = torch.where(torch.arange(T) >= cut[:, None], tails, x)
    length = torch.randint(1, T + 1, (n,), generator=g)
    length[:3] = torch.tensor([1, T, T])
    real = torch.arange(T) < length[:, None]
    x[~real] = 2
    y = torch.where(real, torch.randint(0, 13, (n, T), generator=g), torch.full_like(x, IGNORE))
    return torch.cat([x, x[:5]]), torch.cat([y, y[:5]])  # and five exact copies


def test_a_node_per_distinct_prefix():
    x, y = rows_with_shared_prefixes()
    length = ((y != IGNORE) * torch.arange(1, 25)).amax(1)
    node, tokens, depth = prefix_nodes(x, length)
    seen = {}
    for r in range(len(x)):
        for t in range(24):
            if t < length[r]:
                key = tuple(x[r, : t + 1].tolist())
                assert seen.setdefault(key, int(node[r, t])) == int(node[r, t])  # equal prefixes, one node
                assert (int(tokens[node[r, t]]), int(depth[node[r, t]])) == (int(x[r, t]), t)
            else:
                assert node[r, t] == node[r, length[r] - 1]  # padding repeats the row's last real node
    assert len(set(seen.values())) == len(seen) == len(tokens)  # distinct prefixes, distinct nodes, no others
    assert (depth.diff() >= 0).all()  # numbered depth by depth


def test_prefix_logits_equal_the_padded_forward_and_its_gradient():
    torch.manual_seed(1)
    model = DyckTransformer().eval()
    x, y = rows_with_shared_prefixes()
    batch = prefix_batch(x, y, torch.randperm(len(x), generator=torch.Generator().manual_seed(0)), 16, model.hparams.n_heads)
    assert len(batch.tokens) < int((y != IGNORE).sum())  # shared prefixes are evaluated once
    assert sum(b * (T - q) for b, T, q in batch.shapes) < len(batch.stream)  # and attend as queries less often

    padded = model(x)  # [B, T, C]
    logits, targets, row = model.labelled_logits(batch)
    order = batch.order  # the rows in stream order
    assert sorted(order.tolist()) == list(range(len(x)))
    labelled = y[order] != IGNORE  # [B, T]
    torch.testing.assert_close(logits, padded[order][labelled], rtol=1e-5, atol=1e-5)
    assert torch.equal(targets, y[order][labelled])  # every labelled token once
    assert torch.equal(row, torch.arange(len(order))[:, None].expand(-1, 24)[labelled])

    params = [p for name, p in model.named_parameters() if "self_attn" in name]
    def gradient(loss):
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    want = gradient(torch.nn.functional.cross_entropy(padded[y != IGNORE], y[y != IGNORE], reduction="sum"))
    got = gradient(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_query_attention_is_every_padded_query_once_with_its_copies():
    from callbacks.utils.hidden_states import captured_attention

    torch.manual_seed(2)
    model = DyckTransformer().eval()
    x, y = rows_with_shared_prefixes()
    B, T = x.shape
    with torch.no_grad(), captured_attention(model) as store:
        model(x)
    padded = {name: p[0] for name, p in store.items()}  # [B, H, T, T] every padded query, pads included

    # every stream position of the padded rows' tree: its node's attention is that query's own
    tree = prefix_batch(x, y, torch.arange(B).flip(0), 40, model.hparams.n_heads, whole_rows=True)  # any row order
    probs = []
    with torch.no_grad():
        model.prefix_logits(tree, probs)
    assert len(tree.tokens) < B * T  # shared prefixes are attended once
    t = torch.arange(len(tree.stream)) % T  # whole rows: every chunk is T long
    for p, want in zip(probs, padded.values()):
        torch.testing.assert_close(p[tree.stream], want[tree.order[tree.row], :, t], rtol=1e-5, atol=1e-6)

    # the module's counts: every padded query (the five copies too) counted once
    seen = model.query_attention(model.query_batch([(x, y)]))
    assert seen.probs.keys() == padded.keys() and int(seen.counts.sum()) == B * T
    for name, want in padded.items():
        mean = (seen.probs[name] * seen.counts[:, None, None]).sum(0) / seen.counts.sum()  # [H, K]
        torch.testing.assert_close(mean, want.mean((0, 2)), rtol=1e-5, atol=1e-7)

    # the same forward's labelled logits: the padded batch's evaluation, each distinct row once with its copies
    assert len(seen.row_copies) == len(torch.unique(torch.cat([x, y], 1), dim=0)) and int(seen.row_copies.sum()) == B
    for metric in ("token_acc", "seq_acc"):
        model.task_metric = metric
        want, got = evaluate(model, [(x, y)], keep_outputs=True), evaluation_of([seen.labelled], [seen.row_copies], metric)
        assert (got.token_correct, got.token_total, got.seq_correct, got.seq_total) == (
            want.token_correct, want.token_total, want.seq_correct, want.seq_total)
        assert got.loss == pytest.approx(want.loss, rel=1e-6)
