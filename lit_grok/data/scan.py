"""SCAN for the grokking experiments: the official ``IN: ... OUT: ...`` files, and a DataModule.

The DataModule encodes a 2048-pair training subset and the test split exactly as the reference does
(docs/methods.md §1.2), from the generated grammar or from a directory holding the official files.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from callbacks import ConfigurationError
from lit_grok.data.common import IGNORE
from lit_grok.data.sampling import RandomBatches, TrainBatchesDataModule, eval_loader
from lit_grok.data.scan_grammar import SPLITS, Pair, make_split

PAD, SOS, EOS = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<sos>", "<eos>")

# Official file names (train, test) of each split; "all" is the single file of every command.
FILES = {
    "all": ("tasks.txt", None),
    "simple": ("tasks_train_simple.txt", "tasks_test_simple.txt"),
    "length": ("tasks_train_length.txt", "tasks_test_length.txt"),
    "addprim_jump": ("tasks_train_addprim_jump.txt", "tasks_test_addprim_jump.txt"),
    "addprim_turn_left": ("tasks_train_addprim_turn_left.txt", "tasks_test_addprim_turn_left.txt"),
}
# Sub-folders of the official repository (brendenlake/SCAN), so data_dir may also be a clone of it.
OFFICIAL_FOLDERS = {"all": ".", "simple": "simple_split", "length": "length_split",
                    "addprim_jump": "add_prim_split", "addprim_turn_left": "add_prim_split"}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigurationError(f"unknown SCAN split {split!r}; choose one of {', '.join(SPLITS)}")


def write_pairs(path: Path, pairs: Iterable[Pair]) -> None:
    with open(path, "w") as f:
        f.writelines(f"IN: {command} OUT: {actions}\n" for command, actions in pairs)


def read_pairs(path: Path) -> list[Pair]:
    """Pairs of an official file: split each line on " OUT: ", drop "IN: ", skip blank lines."""
    pairs = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            command, sep, actions = line.removeprefix("IN: ").partition(" OUT: ")
            if not line.startswith("IN: ") or not sep or not command.strip() or not actions.strip():
                raise ConfigurationError(f"{path}:{lineno}: expected 'IN: <command> OUT: <actions>', got {line[:60]!r}")
            pairs.append((" ".join(command.split()), " ".join(actions.split())))
    return pairs


def export_split(split: str, out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Write the generated ``split`` under its official file names in ``out_dir``; return the paths."""
    _check_split(split)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"--out {out} is a file; name a folder for the tasks_*.txt files")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pairs in zip(FILES[split], make_split(split, seed)):
        if name is not None:
            write_pairs(out / name, pairs)
            paths.append(out / name)
    return paths


def load_split_files(data_dir: str | Path, split: str) -> tuple[list[Pair], list[Pair]]:
    """(train, test) pairs read from ``data_dir`` (flat, as exported, or an official SCAN clone)."""
    _check_split(split)
    loaded = []
    for name in FILES[split]:
        if name is None:
            loaded.append([])
            continue
        flat, nested = Path(data_dir) / name, Path(data_dir) / OFFICIAL_FOLDERS[split] / name
        if not flat.is_file() and not nested.is_file():
            raise ConfigurationError(
                f"{flat} not found; write it with `lit-grok scan-export --split {split} --out {data_dir}`"
                " or leave data_dir unset to generate SCAN in code"
            )
        loaded.append(read_pairs(flat if flat.is_file() else nested))
    return loaded[0], loaded[1]


def scan_export_main(argv: Sequence[str] | None = None) -> None:
    """``lit-grok scan-export --split SPLIT --out DIR``: write the generated split's official files."""
    parser = argparse.ArgumentParser(prog="lit-grok scan-export", description=scan_export_main.__doc__)
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--out", required=True, help="directory for the tasks*.txt files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random 80/20 'simple' split")
    args = parser.parse_args(argv)
    for path in export_split(args.split, args.out, args.seed):
        print(f"wrote {path}")


def build_vocab(sequences: Iterable[str]) -> list[str]:
    """id -> token: PAD, SOS, EOS, then every token in order of first appearance."""
    tokens = (token for sequence in sequences for token in sequence.split())
    return list(dict.fromkeys([*SPECIAL_TOKENS, *tokens]))


class ScanDataModule(TrainBatchesDataModule):
    """SCAN command -> action pairs for an encoder-decoder: a fixed training subset sampled with
    replacement each step, evaluated teacher-forced on a fixed test subset and on the training subset.

    Batches are ``(src [B, S], tgt_in [B, T], tgt_out [B, T])`` int64: ``src`` = command ids right-padded
    with PAD (no SOS/EOS), ``tgt_in`` = [SOS] + action ids padded with PAD, ``tgt_out`` = action ids +
    [EOS] padded with IGNORE (-100), so ``tgt_out[:, t] == tgt_in[:, t + 1]`` wherever both are real tokens.
    Vocabularies, lengths and tensors are built in ``__init__`` so a model can be sized from them.

    With ``data_dir`` unset the data are generated in code; the ``simple`` split is then a seeded random
    80/20 assignment, so vocabulary ids, the test set and the training subset differ from the official
    files'. With ``data_dir`` holding the official files, the reference is reproduced: 16 command and 9
    action tokens, max lengths 11/50, training subset starting at indices 7737, 11223, 8005, 7193, 3543.

    Args:
        split: one of simple, length, addprim_jump, addprim_turn_left.
        data_dir: directory of official ``tasks_*.txt`` files (flat, or a SCAN clone); None generates them.
        n_train: size of the training subset: the first ``n_train`` of ``random.Random(0)``'s shuffle.
        n_test_eval: size of the test-eval subset: ``torch.randperm`` seeded 0, first ``n_test_eval``.
        batch_size: training batch size (indices drawn with replacement, continuing the global torch RNG).
        eval_batch_size: batch size of the validation and test loaders.
        split_seed: seed of the generated ``simple`` split; ignored with ``data_dir``.
    """

    def __init__(
        self,
        split: str = "simple",
        data_dir: str | None = None,
        n_train: int = 2048,
        n_test_eval: int = 500,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        _check_split(split)
        if split == "all":
            raise ConfigurationError(f"split 'all' has no test set; choose one of {', '.join(SPLITS[1:])}")
        for name, value in (("n_train", n_train), ("n_test_eval", n_test_eval),
                            ("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {value}")
        self.save_hyperparameters()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        train, test = make_split(split, split_seed) if data_dir is None else load_split_files(data_dir, split)
        for name, value, available in (("n_train", n_train, len(train)), ("n_test_eval", n_test_eval, len(test))):
            if value > available:
                raise ConfigurationError(f"{name}={value} exceeds the {available} pairs of split {split!r}; lower {name}")

        self.command_vocab = build_vocab(c for c, _ in train + test)  # id -> token
        self.action_vocab = build_vocab(a for _, a in train + test)
        order = list(range(len(train)))
        random.Random(0).shuffle(order)
        self.train_indices = order[:n_train]  # positions in the full training split
        self.train_pairs = [train[i] for i in self.train_indices]
        self.test_pairs = test
        generator = torch.Generator().manual_seed(0)
        self.test_eval_indices = torch.randperm(len(test), generator=generator)[:n_test_eval]  # into test
        used = self.train_pairs + test
        self.max_src_len = max(len(c.split()) for c, _ in used) + 2
        self.max_tgt_len = max(len(a.split()) for _, a in used) + 2

        self.train_data = self.encode(self.train_pairs)
        self.test_data = self.encode(test)
        self.test_eval_data = tuple(t[self.test_eval_indices] for t in self.test_data)
        self.train_batches = RandomBatches(self.train_data, batch_size)

    @property
    def src_vocab_size(self) -> int:
        return len(self.command_vocab)

    @property
    def tgt_vocab_size(self) -> int:
        return len(self.action_vocab)

    def encode(self, pairs: Sequence[Pair]) -> tuple[Tensor, Tensor, Tensor]:
        """(src [N, max_src_len], tgt_in [N, max_tgt_len], tgt_out [N, max_tgt_len]) int64."""
        command_id = {token: i for i, token in enumerate(self.command_vocab)}
        action_id = {token: i for i, token in enumerate(self.action_vocab)}
        S, T = self.max_src_len, self.max_tgt_len
        src, tgt_in, tgt_out = [], [], []  # flat row-major lists, reshaped once at the end
        for command, actions in pairs:
            cmd = [command_id[w] for w in command.split()]
            act = [action_id[w] for w in actions.split()]
            if len(cmd) > S or len(act) + 1 > T:
                raise ValueError(f"{command!r} does not fit max_src_len={S} / max_tgt_len={T}")
            src += cmd + [PAD] * (S - len(cmd))
            tgt_in += [SOS] + act + [PAD] * (T - 1 - len(act))
            tgt_out += act + [EOS] + [IGNORE] * (T - 1 - len(act))
        n = len(pairs)
        return (torch.tensor(src).view(n, S), torch.tensor(tgt_in).view(n, T), torch.tensor(tgt_out).view(n, T))

    def val_dataloader(self) -> list[DataLoader]:
        """[test-eval subset, training subset]: dataloader_idx 0 is the test metric that defines grokking."""
        return [eval_loader(self.test_eval_data, self.eval_batch_size), eval_loader(self.train_data, self.eval_batch_size)]

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self.test_data, self.eval_batch_size)
