"""The Dyck module's token_sign target (the composition test's "rep -> token sign"): ±1 per bracket, masked like depth."""
import torch

from lit_grok.models.dyck import DyckTransformer


def test_token_sign_is_plus_one_for_open_and_minus_one_for_close():
    x = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1]])  # "(())" + pads, "()()()"
    y = torch.tensor([[1, 2, 1, 0, -100, -100], [1, 0, 1, 0, 1, 0]])
    targets = DyckTransformer(d_model=16, n_heads=2, d_ff=32).probe_targets((x, y))
    sign, depth = targets["token_sign"], targets["depth"]
    assert torch.equal(sign.values[sign.mask], torch.tensor([1.0, 1, -1, -1, 1, -1, 1, -1, 1, -1]))
    assert torch.equal(sign.mask, depth.mask) and torch.equal(sign.groups, depth.groups)
    assert not sign.categorical
    # depth is the running sum of the signs: the two factors the composition test separates
    assert torch.equal(torch.where(sign.mask, sign.values, 0).cumsum(1)[sign.mask], depth.values[depth.mask])
