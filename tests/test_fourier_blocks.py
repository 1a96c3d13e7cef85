"""The per-block variant of the edge response in the depth basis: masks by block type, and the response of a
masked v_k against a manual perturbation."""
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from callbacks import FourierAttentionCallback, GramSpectrum, UpdateRecorder
from callbacks.functional.fourier_attention import attention_block_masks
from callbacks.utils.param_selection import split_like
from probe_toy_model import ToyEncoder, trainer


def test_block_masks_cut_each_in_proj_into_thirds_and_skip_other_parameters():
    blocks = [("a.in_proj_bias", 0, (6,)), ("a.in_proj_weight", 6, (6, 2)), ("a.out_proj.weight", 18, (2, 2)),
              ("b.in_proj_weight", 22, (6, 2))]
    masks = attention_block_masks(blocks, 34)
    assert torch.equal(masks["W_Q"].nonzero().flatten(), torch.tensor([6, 7, 8, 9, 22, 23, 24, 25]))
    assert torch.equal(masks["W_V"].nonzero().flatten(), torch.tensor([14, 15, 16, 17, 30, 31, 32, 33]))
    assert torch.equal(masks["W_O"].nonzero().flatten(), torch.arange(18, 22))
    cover = sum(m.long() for m in masks.values())
    assert cover.max() == 1 and cover[:6].sum() == 0  # disjoint; the bias is in no block type


def test_per_block_response_matches_a_manual_masked_perturbation(tmp_path):
    torch.manual_seed(0)
    model = ToyEncoder(n_val=30)
    cb = FourierAttentionCallback(attention=[], steps=[5], response_module="ln_f", response_target="count",
                                  directions=[1], max_sequences=None, response_blocks=True)
    recorder, spectrum, seen = UpdateRecorder(interval=1, window=3), GramSpectrum(top_k=3), {}

    class Reference(Callback):  # runs before cb at step 5, with the same weights and Gram window
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step != 5:
                return
            params = recorder.selection.params
            theta = recorder.flat_params().double()
            v = spectrum.directions([1])[0].double().clone()
            keep_k = torch.zeros_like(v, dtype=torch.bool)
            for b in recorder.selection.blocks:  # W_K: the middle third of every in_proj_weight
                if b.name.endswith("in_proj_weight"):
                    keep_k[b.offset + b.numel // 3 : b.offset + 2 * b.numel // 3] = True
            v_k = torch.where(keep_k, v, 0.0)
            eps = 0.005 * theta.norm()
            _, y = model.val_data
            h, h2, _ = model.manual_response(params, split_like(theta + eps * v_k, params))
            keep = (y != -100).numpy()
            f = ((h2 - h).double().numpy() ** 2).sum(-1)[keep]
            depth = y.numpy()[keep]
            s = np.array([f[depth == d].mean() for d in np.unique(depth)])
            power = np.abs(np.fft.rfft(s - s.mean())) ** 2
            seen.update(F=power.max() / power.sum(), omega=int(np.argmax(power)), norm=float(v_k.norm()))

    tr = trainer(tmp_path, [recorder, spectrum, Reference(), cb], max_steps=5)
    tr.fit(model)
    blocks = cb.results[0]["edge"]["v1"]["blocks"]
    assert blocks["W_K"]["F"] == pytest.approx(seen["F"], rel=1e-3) and blocks["W_K"]["omega_star"] == seen["omega"]
    assert blocks["W_K"]["block_norm"] == pytest.approx(seen["norm"], rel=1e-9)
    # not renormalised: the four block types share v1's unit norm (the default selection is attention weights)
    assert sum(b["block_norm"] ** 2 for b in blocks.values()) == pytest.approx(1.0, rel=1e-6)
    assert "fourier_edge/v1/W_O/elevation" in tr.logger.merged("")[5]
