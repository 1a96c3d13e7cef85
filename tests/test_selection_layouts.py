"""``attn_weights`` on the attention layouts people use, tied parameters, wrapper components, frozen parameters.

The models are hand-built imitations of nanoGPT, Hugging Face (Llama, BERT), timm and torch's own
``nn.MultiheadAttention``: each must give exactly its projection matrices (no biases, no MLP ``c_proj``).
"""
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import UpdateRecorder
from callbacks.utils.errors import ConfigurationError
from callbacks.utils.param_selection import select_parameters
from lit_grok.models.dyck import DyckTransformer
from lit_grok.models.scan import ScanTransformer

D = 8


# ---------------------------------------------------------------- nanoGPT
class CausalSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(D, 3 * D)
        self.c_proj = nn.Linear(D, D)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc = nn.Linear(D, 4 * D)
        self.c_proj = nn.Linear(4 * D, D)  # same name as the attention's: must not be selected


class GPTBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = nn.LayerNorm(D), CausalSelfAttention(), nn.LayerNorm(D), MLP()


class NanoGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(wte=nn.Embedding(11, D), wpe=nn.Embedding(5, D), h=nn.ModuleList([GPTBlock(), GPTBlock()]), ln_f=nn.LayerNorm(D))
        )
        self.lm_head = nn.Linear(D, 11, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT does


NANOGPT_ATTN = [f"transformer.h.{i}.attn.{p}.weight" for i in (0, 1) for p in ("c_attn", "c_proj")]


# ---------------------------------------------------------------- Hugging Face
class LlamaAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(D, D, bias=False) for _ in range(4))


class LlamaMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(D, 16), nn.Linear(D, 16), nn.Linear(16, D)


class LlamaLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn, self.mlp = LlamaAttention(), LlamaMLP()


class Projections(nn.Module):  # a class name that says nothing: the name ``self_attn`` decides
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(D, D) for _ in range(4))


class BertSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)


class BertSelfOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(D, D)


class BertAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self, self.output = BertSelfAttention(), BertSelfOutput()


class BertLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention, self.intermediate = BertAttention(), nn.Module()
        self.intermediate.query = nn.Linear(D, D)  # a `query` outside any attention module: not selected


class HFModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([LlamaLayer()])
        self.other = nn.Module()
        self.other.self_attn = Projections()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([BertLayer()])


HF_ATTN = (
    [f"layers.0.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    + [f"other.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    + [f"encoder.layer.0.attention.self.{p}.weight" for p in ("query", "key", "value")]
)


# ---------------------------------------------------------------- timm
class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, 16), nn.Linear(16, D)
        self.proj = nn.Linear(D, D)  # a `proj` under an MLP: not selected


class TimmBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.attn, self.mlp = nn.LayerNorm(D), Attention(), Mlp()


class TimmViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, D, 4)  # timm's patch projection: not attention
        self.blocks = nn.Sequential(TimmBlock(), TimmBlock())
        self.head = nn.Linear(D, 10)


TIMM_ATTN = [f"blocks.{i}.attn.{p}.weight" for i in (0, 1) for p in ("qkv", "proj")]


# ---------------------------------------------------------------- torch
class TorchMHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.packed = nn.MultiheadAttention(D, 2)
        self.cross = nn.MultiheadAttention(D, 2, kdim=4, vdim=6)  # separate q/k/v_proj_weight
        self.ff = nn.Linear(D, D)


MHA_ATTN = ["packed.in_proj_weight", "packed.out_proj.weight"] + [
    f"cross.{p}" for p in ("q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight")
]


@pytest.mark.parametrize(
    "model_cls,want",
    [(NanoGPT, NANOGPT_ATTN), (HFModel, HF_ATTN), (TimmViT, TIMM_ATTN), (TorchMHA, MHA_ATTN)],
    ids=["nanogpt", "huggingface", "timm", "torch-mha"],
)
def test_attn_weights_selects_exactly_the_projection_matrices(model_cls, want):
    model = model_cls()
    sel = select_parameters(model, "attn_weights")
    assert sel.names == tuple(sorted(want))
    named = dict(model.named_parameters())
    assert sel.numel == sum(named[n].numel() for n in want)
    assert all(p.ndim == 2 for p in sel.params)  # weights only, never a bias


def _old_attn_rule(model: nn.Module) -> tuple[str, ...]:
    """The rule before the layouts: names ending in in_proj_weight or out_proj.weight."""
    return tuple(sorted(
        n for n, p in model.named_parameters()
        if p.requires_grad and (n.endswith("in_proj_weight") or n.endswith("out_proj.weight"))
    ))


@pytest.mark.parametrize("model_cls", [DyckTransformer, ScanTransformer], ids=["dyck", "scan"])
def test_project_models_select_what_they_selected_before(model_cls):
    model = model_cls()
    old = _old_attn_rule(model)
    assert len(old) >= 4
    assert select_parameters(model, "attn_weights").names == old


def test_a_tied_parameter_is_selected_by_either_name_and_counted_once():
    model = NanoGPT()
    tied = model.lm_head.weight
    for spec in (["lm_head.weight"], ["transformer.wte.weight"], ["lm_head.*", "transformer.wte.*"]):
        sel = select_parameters(model, spec)
        assert sel.names == ("transformer.wte.weight",)  # under its first name, once
        assert sel.params[0] is tied and sel.numel == tied.numel()
    all_params = select_parameters(model, "all")
    assert all_params.numel == sum(p.numel() for p in model.parameters())  # model.parameters() holds it once
    assert sum(p is tied for p in all_params.params) == 1


class HasModule(nn.Module):
    """A user's submodules named like wrapper attributes: neither is a wrapper, both keep their names."""

    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(D, D)
        self._orig_mod = nn.Linear(D, D)
        self.block = TimmBlock()


def test_a_submodule_called_module_keeps_its_name():
    names = select_parameters(HasModule(), ["*weight"]).names
    assert "module.weight" in names and "_orig_mod.weight" in names
    assert "block.attn.qkv.weight" in names


def _ddp(inner: nn.Module) -> nn.Module:
    """A DistributedDataParallel holding ``inner`` (no process group: only the module tree matters here)."""
    ddp = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(ddp)
    ddp.module = inner
    return ddp


def test_wrapper_components_are_dropped_only_for_wrappers():
    plain = select_parameters(HasModule(), "all").names
    model = HasModule()
    model.block = torch.compile(model.block, backend="eager")  # a compiled inner module: block._orig_mod.attn...
    wrapped = _ddp(torch.compile(model, backend="eager"))  # module._orig_mod.module.weight ...
    raw = [n for n, _ in wrapped.named_parameters()]
    assert "module._orig_mod.module.weight" in raw and "module._orig_mod.block._orig_mod.attn.qkv.weight" in raw
    assert select_parameters(wrapped, "all").names == plain
    assert select_parameters(wrapped, "attn_weights").names == ("block.attn.proj.weight", "block.attn.qkv.weight")


# ---------------------------------------------------------------- frozen at start, unfrozen later
class Finetunable(pl.LightningModule):
    """A backbone (an attention block, frozen at start by BaseFinetuning) and a head; float64, AdamW."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = TimmBlock()
        self.head = nn.Linear(D, 3)
        self.double()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        h = self.backbone.attn.proj(torch.tanh(self.backbone.attn.qkv(x)[..., :D]))
        return F.cross_entropy(self.head(torch.tanh(h)), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.05, weight_decay=0.5)


class UnfreezeAtEpoch(BaseFinetuning):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Any) -> None:
        if epoch == self.epoch:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr=0.02, initial_denom_lr=1.0)


class Thetas(pl.Callback):
    """θ of every parameter, and lr·ω of its param group (0: in no group yet), before every optimizer step."""

    def __init__(self, names: list[str]) -> None:
        self.names, self.thetas, self.decay_rates, self.final = names, [], [], None

    def _flat(self, pl_module: pl.LightningModule) -> np.ndarray:
        named = dict(pl_module.named_parameters())
        return np.concatenate([named[n].detach().numpy().ravel() for n in self.names])

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        named = dict(pl_module.named_parameters())
        rate = {id(p): g["lr"] * g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
        self.thetas.append(self._flat(pl_module))
        self.decay_rates.append(np.concatenate(
            [np.full(named[n].numel(), rate.get(id(named[n]), 0.0) if named[n].grad is not None else 0.0) for n in self.names]
        ))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.final = self._flat(pl_module)


def _fit_finetuning(recorder: UpdateRecorder, names: list[str], steps: int = 6) -> Thetas:
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, D, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))
    thetas = Thetas(names)
    trainer = pl.Trainer(
        max_steps=steps, callbacks=[UnfreezeAtEpoch(1), recorder, thetas], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, precision="64-true",
    )
    trainer.fit(Finetunable(), DataLoader(data, batch_size=8))  # 2 steps per epoch: unfrozen from step 3
    return thetas


def test_unfreezing_an_unselected_parameter_stops_the_fit_at_that_step():
    with pytest.raises(ConfigurationError, match=r"'backbone\.attn\.qkv\.weight'.*optimizer step 3.*include_frozen=True"):
        _fit_finetuning(UpdateRecorder(params="all_matrices", interval=1, window=2), ["head.weight"])


def test_include_frozen_follows_parameters_into_the_optimizer_exactly():
    rec = UpdateRecorder(params="all_matrices", interval=1, window=6, include_frozen=True)
    names = ["backbone.attn.proj.weight", "backbone.attn.qkv.weight", "backbone.mlp.fc1.weight",
             "backbone.mlp.fc2.weight", "backbone.mlp.proj.weight", "head.weight"]
    snaps = _fit_finetuning(rec, names)
    assert rec.selection.names == tuple(names)
    thetas = np.stack(snaps.thetas + [snaps.final])  # [7, P]
    want_total = np.diff(thetas, axis=0)  # [6, P]
    want_wd = -np.stack(snaps.decay_rates) * thetas[:-1]  # AdamW: −η ω θ_{s−1} where the optimizer stepped it
    total, wd = (t.numpy() for t in rec.window_rows())
    np.testing.assert_allclose(total, want_total, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(wd, want_wd, rtol=1e-10, atol=1e-15)
    qkv = rec.selection.blocks[1]
    part = total[:, qkv.offset : qkv.offset + qkv.numel]
    assert np.all(part[:2] == 0) and np.all(np.abs(part[2:]).sum(1) > 0)  # frozen for 2 steps, then trained
    assert np.all(wd[2:, qkv.offset : qkv.offset + qkv.numel] != 0)  # and decayed, in the new param group
