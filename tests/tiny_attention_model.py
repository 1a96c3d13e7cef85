"""A one-attention-layer token classifier trained for a few steps in float64, and brute-force checks on it."""
import functools

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyAttention(pl.LightningModule):
    """Predicts (running sum of tokens) mod 3 at every position; the last position is unlabelled."""

    task_metric = "token_acc"

    def __init__(self, d: int = 8, vocab: int = 5, n_classes: int = 3, lr: float = 3e-2, weight_decay: float = 0.5):
        super().__init__()
        self.lr, self.weight_decay = lr, weight_decay
        self.emb = nn.Embedding(vocab, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x):
        h = self.emb(x)
        T = x.shape[1]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), 1)
        a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        return self.head(h + a)

    def labelled_logits(self, batch):
        x, y = batch
        keep = y != -100
        seq = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(y)
        return self(x)[keep], y[keep], seq[keep]

    def training_step(self, batch, batch_idx):
        logits, y, _ = self.labelled_logits(batch)
        return F.cross_entropy(logits, y)

    def validation_step(self, batch, batch_idx):
        logits, y, _ = self.labelled_logits(batch)
        self.log("val/acc", (logits.argmax(-1) == y).double().mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def train_dataloader(self):
        return tiny_data(32, seed=0, batch_size=8)

    def val_dataloader(self):  # what the analysis callbacks evaluate on (callbacks.utils.evaluation.evaluation_batches)
        return tiny_data(48, seed=1, batch_size=16)


def tiny_data(n: int, seed: int, batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 5, (n, 6), generator=g)
    y = x.cumsum(1) % 3
    y[:, -1] = -100
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class Spy(pl.Callback):
    """Keeps, after every optimizer step, the weights and the recorder's window rows (for brute-force checks)."""

    def __init__(self):
        self.state, self.rows = {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        from callbacks.update_recorder import UpdateRecorder

        recorder = UpdateRecorder.find(trainer)
        step = trainer.global_step
        self.state[step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.names = recorder.selection.names
        self.rows[step] = recorder.window_rows()[0].clone().numpy()  # [w, P], oldest -> newest


class MemoryLogger(Logger):
    def __init__(self):
        super().__init__()
        self.logged = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


def fit_tiny(callbacks, max_steps, root):
    """Train TinyAttention in float64 with UpdateRecorder(window=4), GramSpectrum, a GrokDetector that fires at
    the first validation (step 4) and a Spy; return (trainer, model, spy, logger)."""
    from callbacks.gram_spectrum import GramSpectrum
    from callbacks.grok_detector import GrokDetector
    from callbacks.update_recorder import UpdateRecorder

    torch.manual_seed(0)
    spy, logger = Spy(), MemoryLogger()
    trainer = pl.Trainer(
        max_steps=max_steps, val_check_interval=4, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        precision="64-true", default_root_dir=root, logger=logger, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
        callbacks=[UpdateRecorder(window=4), GramSpectrum(top_k=4), GrokDetector(threshold=1e-9), *callbacks, spy],
    )
    model = TinyAttention()
    trainer.fit(model)
    return trainer, model, spy, logger


# ---- brute force, independent of the callbacks' code -------------------------------------------
def flat(state, names):
    return np.concatenate([state[n].numpy().reshape(-1) for n in names])


def gram_directions(rows, ks):
    """v_k (rows [len(ks), P]) by numpy SVD of the window, signed so that Σ_j ⟨x_j, v_k⟩ ≥ 0."""
    _, _, vt = np.linalg.svd(rows, full_matrices=False)
    v = vt[[k - 1 for k in ks]]
    return v * np.where((rows @ v.T).sum(0) < 0, -1.0, 1.0)[:, None]


@functools.cache
def _scratch_model():
    return TinyAttention().double().eval()


def evaluate_at(state, names, theta):
    """(loss, token accuracy, per-token hits, log-probs) of TinyAttention with the selection set to ``theta``."""
    state = dict(state)
    offset = 0
    for n in names:
        size = state[n].numel()
        state[n] = torch.from_numpy(theta[offset : offset + size].reshape(tuple(state[n].shape)).copy())
        offset += size
    model = _scratch_model()
    model.load_state_dict(state)
    losses, hits, logps = [], [], []
    with torch.no_grad():
        for x, y in model.val_dataloader():
            logits = model(x).numpy()
            labelled = (y != -100).numpy()
            z, t = logits[labelled], y.numpy()[labelled]
            logp = z - z.max(1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(1, keepdims=True))
            losses.append(-logp[np.arange(len(t)), t])
            hits.append(z.argmax(1) == t)
            logps.append(logp)
    losses, hits = np.concatenate(losses), np.concatenate(hits)
    return losses.mean(), hits.mean(), hits, np.concatenate(logps)


def fail_evaluate_on_call(monkeypatch, module, n: int) -> None:
    """Make ``module.evaluate`` raise RuntimeError("boom") on its n-th call (to test restores on error)."""
    evaluate, calls = module.evaluate, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError("boom")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(module, "evaluate", failing)
