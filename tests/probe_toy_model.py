"""A two-block causal pre-LN encoder on bracket-like tokens, with probe targets, for the probe/Fourier/attention tests.

Target "count" is the running number of 1-tokens (like Dyck depth), "token" the token id (categorical).
Pads (id 2) sit at the end of each row; duplicated rows share a group, as in Dyck.
"""
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import ProbeTarget, sequence_keys

PAD = 2


def toy_data(n: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [n, T] in {0, 1} padded with PAD after a random length >= 2; labels = running count of 1s."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n, T), generator=g)
    lengths = torch.randint(2, T + 1, (n,), generator=g)
    pad = torch.arange(T)[None, :] >= lengths[:, None]
    q = n // 4
    x[q : 2 * q], pad[q : 2 * q] = x[:q].clone(), pad[:q].clone()  # duplicated sequences
    y = torch.cumsum(x, 1)
    x[pad], y[pad] = PAD, -100
    return x, y


class ToyEncoder(pl.LightningModule):
    task_metric = "token_acc"

    def __init__(self, d: int = 8, heads: int = 2, T: int = 6, n_val: int = 40, lr: float = 1e-2,
                 weight_decay: float = 0.1, groups: int = 1, val_batch: int = 16) -> None:
        super().__init__()
        self.lr, self.weight_decay, self.groups, self.val_batch = lr, weight_decay, groups, val_batch
        self.tok_emb = nn.Embedding(3, d)
        self.pos_emb = nn.Parameter(0.5 * torch.randn(T, d))
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, T + 1)
        self.train_data = toy_data(32, T, seed=1)
        self.val_data = toy_data(n_val, T, seed=2)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.tok_emb(x) + self.pos_emb[: x.shape[1]]

    def causal_mask(self, T: int) -> torch.Tensor:
        return nn.Transformer.generate_square_subsequent_mask(T, device=self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_hidden(x))

    def final_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """ln_f's output [B, T, d]: what the edge-response tests perturb."""
        return self.ln_f(self.encoder(self.embed(x), mask=self.causal_mask(x.shape[1]), is_causal=True))

    @torch.no_grad()
    def manual_response(self, params: list, moved: list) -> tuple[torch.Tensor, torch.Tensor, list]:
        """(h, h at ``moved``, the saved originals) of ``final_hidden`` on the validation data in eval mode, with
        ``params`` set to ``moved`` for the second forward and restored after: the brute force of the edge response."""
        x, _ = self.val_data
        self.eval()
        h = self.final_hidden(x)
        saved = [p.detach().clone() for p in params]
        for p, new in zip(params, moved):
            p.copy_(new)
        h2 = self.final_hidden(x)
        for p, old in zip(params, saved):
            p.copy_(old)
        self.train()
        return h, h2, saved

    def labelled_logits(self, batch):
        x, y = batch
        keep = y != -100
        seq = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(y)
        return self(x)[keep], y[keep], seq[keep]

    def probe_targets(self, batch):
        x, y = batch
        mask, groups = y != -100, sequence_keys(x)
        return {"count": ProbeTarget(y.clamp(min=0).float(), mask, False, groups),
                "token": ProbeTarget(x, mask, True, groups)}

    def training_step(self, batch, batch_idx):
        logits, y, _ = self.labelled_logits(batch)
        return F.cross_entropy(logits, y)

    def validation_step(self, batch, batch_idx):
        logits, y, _ = self.labelled_logits(batch)
        self.log("val/acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        params = list(self.parameters())
        if self.groups == 1:
            return torch.optim.AdamW(params, lr=self.lr, betas=(0.9, 0.98), weight_decay=self.weight_decay)
        half = len(params) // 2
        return torch.optim.AdamW([{"params": params[:half]}, {"params": params[half:], "lr": 2 * self.lr}],
                                 lr=self.lr, betas=(0.9, 0.98), weight_decay=self.weight_decay)

    def train_dataloader(self):
        return DataLoader(TensorDataset(*self.train_data), batch_size=8, shuffle=False)

    def val_dataloader(self):
        return DataLoader(TensorDataset(*self.val_data), batch_size=self.val_batch, shuffle=False)


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call as (step, metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def merged(self, prefix: str) -> dict[int, dict]:
        """{step: metrics whose key starts with prefix}."""
        out: dict[int, dict] = {}
        for step, metrics in self.calls:
            picked = {k: v for k, v in metrics.items() if k.startswith(prefix)}
            if picked:
                out.setdefault(step, {}).update(picked)
        return out


def trainer(tmp_path, callbacks, max_steps: int = 3, **kwargs) -> pl.Trainer:
    logger = RecordingLogger()
    return pl.Trainer(max_steps=max_steps, callbacks=callbacks, logger=logger, default_root_dir=tmp_path,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, accelerator="cpu", devices=1, **kwargs)
