"""SCAN data: the generated grammar against an independent interpreter and the paper's examples, the
split sizes of the official files, the file format, and the DataModule's encoding (docs/methods.md §1.2)."""
from __future__ import annotations

import random
from itertools import product
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentParser

from callbacks import ConfigurationError
from lit_grok.data.scan import (
    EOS, IGNORE_INDEX, PAD, SOS, ScanDataModule, export_split, load_split_files, scan_export_main,
)
from lit_grok.data.scan_grammar import SPLITS, all_commands, all_pairs, interpret, make_split

# The first four lines of the official simple_split/tasks_train_simple.txt (brendenlake/SCAN).
OFFICIAL_HEAD = """\
IN: jump opposite right twice and turn opposite right thrice OUT: I_TURN_RIGHT I_TURN_RIGHT I_JUMP I_TURN_RIGHT I_TURN_RIGHT I_JUMP I_TURN_RIGHT I_TURN_RIGHT I_TURN_RIGHT I_TURN_RIGHT I_TURN_RIGHT I_TURN_RIGHT
IN: run opposite left after walk right OUT: I_TURN_RIGHT I_WALK I_TURN_LEFT I_TURN_LEFT I_RUN
IN: walk after run around right twice OUT: I_TURN_RIGHT I_RUN I_TURN_RIGHT I_RUN I_TURN_RIGHT I_RUN I_TURN_RIGHT I_RUN I_TURN_RIGHT I_RUN I_TURN_RIGHT I_RUN I_TURN_RIGHT I_RUN I_TURN_RIGHT I_RUN I_WALK
IN: look around right thrice and turn left OUT: """ + " ".join(["I_TURN_RIGHT I_LOOK"] * 12) + " I_TURN_LEFT\n"


def brute_force_pairs() -> dict[str, list[str]]:
    """Denotations built bottom-up from the grammar rules (no parsing), as action lists."""
    acts = {"walk": ["I_WALK"], "look": ["I_LOOK"], "run": ["I_RUN"], "jump": ["I_JUMP"], "turn": []}
    verbs = {u: a for u, a in acts.items() if u != "turn"}
    for (u, a), (d, t) in product(acts.items(), [("left", "I_TURN_LEFT"), ("right", "I_TURN_RIGHT")]):
        verbs[f"{u} {d}"] = [t] + a
        verbs[f"{u} opposite {d}"] = [t] + [t] + a
        verbs[f"{u} around {d}"] = [t] + a + [t] + a + [t] + a + [t] + a
    phrases = dict(verbs)
    for v, a in verbs.items():
        phrases[f"{v} twice"], phrases[f"{v} thrice"] = a + a, a + a + a
    commands = dict(phrases)
    for (x, ax), (y, ay) in product(phrases.items(), repeat=2):
        commands[f"{x} and {y}"], commands[f"{x} after {y}"] = ax + ay, ay + ax
    return commands


@pytest.fixture(scope="module")
def simple_dm() -> ScanDataModule:
    return ScanDataModule()


def write(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.write_text("".join(f"IN: {c} OUT: {a}\n" for c, a in pairs))


# ---------------------------------------------------------------- grammar and interpretation


def test_all_commands_match_independent_interpreter():
    expected = brute_force_pairs()
    assert len(all_commands()) == len(set(all_commands())) == 20910
    assert set(all_commands()) == set(expected)
    assert all(actions.split() == expected[command] for command, actions in all_pairs())
    assert max(len(a.split()) for _, a in all_pairs()) == 48
    assert max(len(c.split()) for c in all_commands()) == 9


@pytest.mark.parametrize("command, actions", [
    ("jump", "I_JUMP"),
    ("jump left", "I_TURN_LEFT I_JUMP"),
    ("jump around right", " ".join(["I_TURN_RIGHT I_JUMP"] * 4)),
    ("turn left twice", "I_TURN_LEFT I_TURN_LEFT"),
    ("turn opposite left", "I_TURN_LEFT I_TURN_LEFT"),
    ("turn around left", " ".join(["I_TURN_LEFT"] * 4)),
    ("jump opposite left after walk around left",
     " ".join(["I_TURN_LEFT I_WALK"] * 4) + " I_TURN_LEFT I_TURN_LEFT I_JUMP"),
    ("walk opposite right thrice and look", " ".join(["I_TURN_RIGHT I_TURN_RIGHT I_WALK"] * 3) + " I_LOOK"),
    ("look thrice after run left", "I_TURN_LEFT I_RUN I_LOOK I_LOOK I_LOOK"),
    ("jump twice and walk right thrice", "I_JUMP I_JUMP" + " I_TURN_RIGHT I_WALK" * 3),
])
def test_paper_examples(command, actions):
    assert interpret(command) == actions


def test_official_lines_interpreted_identically(tmp_path):
    (tmp_path / "tasks.txt").write_text(OFFICIAL_HEAD)
    pairs, empty = load_split_files(tmp_path, "all")
    assert len(pairs) == 4 and empty == []
    assert all(interpret(c) == a for c, a in pairs)


@pytest.mark.parametrize("bad", ["twice", "turn", "walk and", "jump left right", "walk around", "run and look after walk"])
def test_interpret_rejects_non_commands(bad):
    with pytest.raises(ValueError, match="not a SCAN command"):
        interpret(bad)


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("split, n_train, n_test, primitive, n_copies", [
    ("all", 20910, 0, None, 0),
    ("simple", 16728, 4182, None, 0),
    ("length", 16990, 3920, None, 0),
    ("addprim_jump", 14670, 7706, "jump", 1467),
    ("addprim_turn_left", 21890, 1208, "turn left", 2189),
])
def test_split_sizes_and_disjointness(split, n_train, n_test, primitive, n_copies):
    train, test = make_split(split)
    assert (len(train), len(test)) == (n_train, n_test)
    train_cmds, test_cmds = {c for c, _ in train}, {c for c, _ in test}
    assert train_cmds | test_cmds == set(all_commands())
    assert not train_cmds & test_cmds
    assert len(test_cmds) == len(test)  # no test command repeats
    assert all(interpret(c) == a for c, a in train + test)
    if primitive is None:
        assert len(train_cmds) == len(train)
        return
    assert sum(c == primitive for c, _ in train) == n_copies == n_train // 10
    assert len(train_cmds) == len(train) - n_copies + 1
    contains = lambda c: f" {primitive} " in f" {c} "  # noqa: E731
    assert all(not contains(c) for c in train_cmds - {primitive})
    assert all(contains(c) for c in test_cmds)


def test_length_split_threshold():
    train, test = make_split("length")
    assert max(len(a.split()) for _, a in train) == 22
    assert min(len(a.split()) for _, a in test) == 24  # no command has exactly 23 actions


def test_simple_split_is_seeded():
    assert make_split("simple", seed=0) == make_split("simple", seed=0)
    assert make_split("simple", seed=0)[1] != make_split("simple", seed=1)[1]


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("split", SPLITS)
def test_export_load_round_trip(tmp_path, split):
    paths = export_split(split, tmp_path / "out")
    assert [p.name for p in paths] == (
        ["tasks.txt"] if split == "all" else [f"tasks_train_{split}.txt", f"tasks_test_{split}.txt"])
    assert load_split_files(tmp_path / "out", split) == make_split(split)


def test_official_nested_layout_and_blank_lines(tmp_path):
    (tmp_path / "simple_split").mkdir()
    (tmp_path / "simple_split" / "tasks_train_simple.txt").write_text(OFFICIAL_HEAD + "\n\n")
    write(tmp_path / "simple_split" / "tasks_test_simple.txt", [("jump", "I_JUMP")])
    train, test = load_split_files(tmp_path, "simple")
    assert [c for c, _ in train][1] == "run opposite left after walk right" and len(train) == 4
    assert test == [("jump", "I_JUMP")]


def test_cli_export(tmp_path, capsys):
    scan_export_main(["--split", "addprim_jump", "--out", str(tmp_path)])
    assert "tasks_test_addprim_jump.txt" in capsys.readouterr().out
    lines = (tmp_path / "tasks_train_addprim_jump.txt").read_text().splitlines()
    assert len(lines) == 14670 and lines.count("IN: jump OUT: I_JUMP") == 1467
    with pytest.raises(SystemExit):
        scan_export_main(["--split", "nope", "--out", str(tmp_path)])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigurationError, match=r"tasks_train_length.txt not found.*scan-export --split length"):
        load_split_files(tmp_path, "length")
    write(tmp_path / "tasks_train_simple.txt", [("jump", "I_JUMP")])
    with open(tmp_path / "tasks_train_simple.txt", "a") as f:
        f.write("\nIN: walk I_WALK\n")
    write(tmp_path / "tasks_test_simple.txt", [("walk", "I_WALK")])
    with pytest.raises(ValueError, match=r"tasks_train_simple.txt:3: expected 'IN: <command> OUT: <actions>'"):
        load_split_files(tmp_path, "simple")
    (tmp_path / "tasks_train_simple.txt").write_text("jump OUT: I_JUMP\n")
    with pytest.raises(ValueError, match=r"tasks_train_simple.txt:1:"):
        load_split_files(tmp_path, "simple")
    for call in (lambda: make_split("jump"), lambda: load_split_files(tmp_path, "jump"),
                 lambda: export_split("jump", tmp_path)):
        with pytest.raises(ValueError, match="unknown SCAN split 'jump'; choose one of all, simple, length"):
            call()


# ---------------------------------------------------------------- DataModule


def test_vocab_order_and_subset_rules(tmp_path):
    # Vocabularies follow first appearance over train then test; lengths use the subset and the test.
    (tmp_path / "tasks_train_simple.txt").write_text(OFFICIAL_HEAD)
    write(tmp_path / "tasks_test_simple.txt", [("walk left", "I_TURN_LEFT I_WALK")])
    dm = ScanDataModule(data_dir=str(tmp_path), n_train=4, n_test_eval=1)
    assert {t: i for i, t in enumerate(dm.command_vocab)} == {
        "<pad>": 0, "<sos>": 1, "<eos>": 2, "jump": 3, "opposite": 4, "right": 5, "twice": 6, "and": 7,
        "turn": 8, "thrice": 9, "run": 10, "left": 11, "after": 12, "walk": 13, "around": 14, "look": 15}
    assert dm.action_vocab == ["<pad>", "<sos>", "<eos>", "I_TURN_RIGHT", "I_JUMP", "I_WALK",
                               "I_TURN_LEFT", "I_RUN", "I_LOOK"]

    order = list(range(6))
    random.Random(0).shuffle(order)
    assert order == [4, 2, 1, 0, 5, 3]  # so line 3 is left out of a 5-pair subset
    train = [("walk twice", "I_WALK I_WALK"), ("walk thrice", "I_WALK I_WALK I_WALK")] * 3
    train[3] = ("jump around left thrice", " ".join(["I_TURN_LEFT I_JUMP"] * 12))
    write(tmp_path / "tasks_train_length.txt", train)
    write(tmp_path / "tasks_test_length.txt", [("look left", "I_TURN_LEFT I_LOOK")])
    dm = ScanDataModule(split="length", data_dir=str(tmp_path), n_train=5, n_test_eval=1)
    assert dm.train_pairs == [train[i] for i in order[:5]]
    assert dm.command_vocab[3:] == ["walk", "twice", "thrice", "jump", "around", "left", "look"]
    assert dm.action_vocab[3:] == ["I_WALK", "I_TURN_LEFT", "I_JUMP", "I_LOOK"]
    assert (dm.max_src_len, dm.max_tgt_len) == (2 + 2, 3 + 2)  # the 4-word, 24-action line is left out


def test_generated_simple_datamodule(simple_dm):
    dm = simple_dm
    assert (dm.src_vocab_size, dm.tgt_vocab_size, dm.max_src_len, dm.max_tgt_len) == (16, 9, 11, 50)
    train, test = make_split("simple")
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    assert dm.train_pairs == [train[i] for i in order[:2048]] and dm.test_pairs == test
    expected_eval = torch.randperm(4182, generator=torch.Generator().manual_seed(0))[:500]
    assert torch.equal(dm.test_eval_indices, expected_eval)
    assert [t.shape for t in dm.train_data] == [(2048, 11), (2048, 50), (2048, 50)]
    assert [t.shape for t in dm.test_data] == [(4182, 11), (4182, 50), (4182, 50)]
    assert all(torch.equal(a, b[expected_eval]) for a, b in zip(dm.test_eval_data, dm.test_data))


def test_encoding_decodes_to_pairs_with_shift_and_padding(simple_dm):
    dm = simple_dm
    for pairs, (src, tgt_in, tgt_out) in ((dm.train_pairs, dm.train_data), (dm.test_pairs, dm.test_data)):
        assert src.dtype == tgt_in.dtype == tgt_out.dtype == torch.long
        for (command, actions), s, ti, to in zip(pairs, src.tolist(), tgt_in.tolist(), tgt_out.tolist()):
            n_cmd, n_act = len(command.split()), len(actions.split())
            assert [dm.command_vocab[i] for i in s[:n_cmd]] == command.split() and set(s[n_cmd:]) == {PAD}
            assert ti[0] == SOS and [dm.action_vocab[i] for i in ti[1 : n_act + 1]] == actions.split()
            assert set(ti[n_act + 1 :]) == {PAD}
            assert to[:n_act] == ti[1 : n_act + 1] and to[n_act] == EOS and set(to[n_act + 1 :]) == {IGNORE_INDEX}
        assert torch.equal((src != PAD).sum(1), torch.tensor([len(c.split()) for c, _ in pairs]))
        assert torch.equal((tgt_in != PAD), (tgt_out != IGNORE_INDEX))  # the same positions are real


def test_dataloaders(simple_dm):
    dm = simple_dm
    torch.manual_seed(3)
    src, tgt_in, tgt_out = next(iter(dm.train_dataloader()))
    torch.manual_seed(3)
    idx = torch.randint(0, 2048, (256,))  # one global-RNG draw per step, with replacement
    assert torch.equal(src, dm.train_data[0][idx]) and torch.equal(tgt_out, dm.train_data[2][idx])
    test_eval, train_eval = dm.val_dataloader()
    for loader, data in ((test_eval, dm.test_eval_data), (train_eval, dm.train_data), (dm.test_dataloader(), dm.test_data)):
        batches = list(loader)
        assert all(isinstance(b, tuple) and len(b) == 3 for b in batches)
        assert [len(b[0]) for b in batches][0] == 256
        assert all(torch.equal(torch.cat([b[i] for b in batches]), data[i]) for i in range(3))


def test_exported_files_give_the_generated_datamodule(tmp_path):
    export_split("addprim_turn_left", tmp_path)
    from_files = ScanDataModule(split="addprim_turn_left", data_dir=str(tmp_path), n_train=300, n_test_eval=50)
    generated = ScanDataModule(split="addprim_turn_left", n_train=300, n_test_eval=50)
    assert from_files.command_vocab == generated.command_vocab and from_files.action_vocab == generated.action_vocab
    assert all(torch.equal(a, b) for a, b in zip(from_files.test_data, generated.test_data))
    assert all(torch.equal(a, b) for a, b in zip(from_files.train_data, generated.train_data))


def test_jsonargparse_signature():
    parser = ArgumentParser()
    parser.add_class_arguments(ScanDataModule, "data")
    cfg = parser.parse_args(["--data.split", "length", "--data.n_train", "64"])
    assert cfg.data.split == "length" and cfg.data.n_train == 64 and cfg.data.data_dir is None


@pytest.mark.parametrize("kwargs, error, match", [
    ({"split": "jump"}, ValueError, "unknown SCAN split 'jump'; choose one of"),
    ({"split": "all"}, ValueError, "split 'all' has no test set"),
    ({"n_train": 0}, ValueError, "n_train must be >= 1, got 0"),
    ({"n_test_eval": 0}, ValueError, "n_test_eval must be >= 1"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"eval_batch_size": -1}, ValueError, "eval_batch_size must be >= 1"),
    ({"n_train": 20000}, ValueError, "n_train=20000 exceeds the 16728 pairs of split 'simple'; lower n_train"),
    ({"n_test_eval": 5000}, ValueError, "n_test_eval=5000 exceeds the 4182 pairs"),
    ({"data_dir": "/nonexistent/scan"}, ConfigurationError, "scan-export --split simple --out /nonexistent/scan"),
])
def test_datamodule_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        ScanDataModule(**kwargs)
