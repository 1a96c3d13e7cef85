"""What the probe-style analyses share: check at fit start that module, submodules and target exist, then collect
every labelled token's hidden state of the named submodules with its target value and sequence group."""
from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch

from ..functional.probe import token_samples
from ..utils.errors import ConfigurationError, bad_input_is_configuration
from ..utils.evaluation import eval_mode, evaluation_batches, require_evaluable
from ..utils.hidden_states import captured_sequences, require_target, resolve_modules
from ..utils.protocols import ProbeableModule, ProbeTarget


def check_token_probe(trainer: pl.Trainer, pl_module: pl.LightningModule, modules: dict[str, str], target: str,
                      dataloader_idx: int, who: str) -> ProbeTarget:
    """Fail early, in one line, unless the module is evaluable and probeable, ``modules`` (alias -> name) exist and
    its ``probe_targets`` have ``target``; returns that target on the first validation batch."""
    require_evaluable(pl_module, who)
    if not isinstance(pl_module, ProbeableModule):
        raise ConfigurationError(f"{who} needs the LightningModule to define `probe_targets(batch)` (callbacks.utils.protocols)")
    resolve_modules(pl_module, list(modules.values()), who)
    batch = evaluation_batches(trainer, pl_module, dataloader_idx, max_batches=1)[0]
    return require_target(pl_module.probe_targets(batch), target, who)


@dataclass
class TokenSamples:
    """Hidden states of the labelled tokens of the first sequences, per module, with their targets."""

    features: dict[str, np.ndarray]  # alias -> [n, D]
    values: np.ndarray  # [n] target values (class ids when categorical)
    groups: np.ndarray  # [n] sequence group of each token (equal sequences share one)
    categorical: bool


def collect_token_samples(trainer: pl.Trainer, pl_module: pl.LightningModule, modules: dict[str, str], target: str,
                          dataloader_idx: int, max_sequences: int | None, who: str) -> TokenSamples:
    """The outputs of ``modules`` (alias -> name) at every token ``target`` labels, in eval mode, on the first
    ``max_sequences`` sequences of validation dataloader ``dataloader_idx``."""
    feats: dict[str, list] = {alias: [] for alias in modules}
    values, groups, categorical = [], [], False
    batches = evaluation_batches(trainer, pl_module, dataloader_idx)
    with eval_mode(pl_module), torch.no_grad():
        for seen in captured_sequences(pl_module, batches, list(modules.values()), who, max_sequences=max_sequences,
                                       with_targets=True):
            labels = require_target(seen.targets, target, who)
            for alias, name in modules.items():
                with bad_input_is_configuration(f"{who} (module {name!r})"):
                    x, y, g = token_samples(seen.outputs[name], labels)
                feats[alias].append(x)
            values.append(y)
            groups.append(g)
            categorical = labels.categorical
    return TokenSamples({alias: np.concatenate(x) for alias, x in feats.items()}, np.concatenate(values),
                        np.concatenate(groups), bool(categorical))
