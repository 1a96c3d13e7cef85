"""P = 1.2 M float32 rows: the window's inner products accumulate in float64, so σ_k and grad% on every v_k match
a numpy float64 SVD of the same rows to 1e-6, in a badly conditioned window (σ₁/σ₅ ≈ 3·10³)."""
import numpy as np
import torch
from torch import nn

from callbacks import EdgeDecomposer, GramSpectrum, UpdateRecorder

P, W = 1_200_000, 5


def test_large_window_matches_float64_svd():
    torch.manual_seed(0)
    base = torch.randn(W + 1, P) + 3.0  # rows sharing a large mean direction, as training updates do
    scales = torch.tensor([1.0, 1e-1, 1e-2, 1e-3, 1e-3, 1e-3])
    rows = torch.linalg.qr(torch.randn(W + 1, W + 1))[0] @ (scales[:, None] * base)  # [W+1, P] planted gradients
    module = nn.Module()
    module.w = nn.Parameter(torch.randn(P))
    opt = torch.optim.SGD([module.w], lr=1.0, weight_decay=0.3)  # a row = −(g + 0.3 θ): both parts are large
    rec = UpdateRecorder(params=["w"], interval=1, window=W)
    rec.attach(module, [opt])
    spectrum, edge = GramSpectrum(top_k=W), EdgeDecomposer(top_k=W)
    spectrum.bind(rec)
    edge.bind(rec)
    for row in rows:
        module.w.grad = row.clone()
        opt.step()
    got = {**spectrum.latest, **edge.latest}
    x, x_wd = (t.double().numpy() for t in rec.window_rows())  # [W, P] the recorder's float32 rows
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    assert s[0] / s[-1] > 1e3
    for k in range(W):
        g, d = (x - x_wd) @ vt[k], x_wd @ vt[k]
        want = (g**2).mean() / ((g**2).mean() + (d**2).mean())
        np.testing.assert_allclose(got[f"edge/sigma_{k + 1}"], s[k], rtol=1e-6)
        np.testing.assert_allclose(got[f"edge/grad_frac_v{k + 1}"], want, rtol=1e-6)
