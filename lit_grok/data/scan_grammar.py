"""The SCAN grammar of Lake & Baroni (2018), its interpretation, and the standard splits, in code.

Every command of the phrase-structure grammar is generated (20,910 of them) and mapped to its
action sequence by a small parser, so no file is downloaded. Splits are lists of (command, actions)
string pairs, actions space-separated, exactly as in the official ``IN: ... OUT: ...`` files.
"""
from __future__ import annotations

import functools
import random

from callbacks import ConfigurationError

Pair = tuple[str, str]  # (command, actions), e.g. ("jump left", "I_TURN_LEFT I_JUMP")

SPLITS = ("all", "simple", "length", "addprim_jump", "addprim_turn_left")

ACTIONS = {"walk": "I_WALK", "look": "I_LOOK", "run": "I_RUN", "jump": "I_JUMP"}
TURNS = {"left": "I_TURN_LEFT", "right": "I_TURN_RIGHT"}
REPEATS = {"twice": 2, "thrice": 3}
LENGTH_CUTOFF = 22  # length split: train on action sequences of at most 22 actions
PRIMITIVE_SHARE = 10  # addprim splits: the bare primitive is 1/10 of the training lines


def _verb(words: list[str], command: str) -> list[str]:
    """V -> U | U dir | U opposite dir | U around dir, with U a primitive or ``turn`` (no action)."""
    if not words or (words[0] not in ACTIONS and not (words[0] == "turn" and len(words) > 1)):
        raise ConfigurationError(f"not a SCAN command: {command!r}")
    act = [ACTIONS[words[0]]] if words[0] in ACTIONS else []
    if len(words) == 1:
        return act
    if words[-1] not in TURNS or len(words) > 3:
        raise ConfigurationError(f"not a SCAN command: {command!r}")
    turn = TURNS[words[-1]]
    if len(words) == 2:
        return [turn] + act
    if words[1] == "opposite":
        return [turn, turn] + act
    if words[1] == "around":
        return ([turn] + act) * 4
    raise ConfigurationError(f"not a SCAN command: {command!r}")


def _phrase(words: list[str], command: str) -> list[str]:
    """S -> V | V twice | V thrice."""
    if words and words[-1] in REPEATS:
        return _verb(words[:-1], command) * REPEATS[words[-1]]
    return _verb(words, command)


def interpret(command: str) -> str:
    """The action sequence of a SCAN command: C -> S | S and S (in order) | S after S (reversed)."""
    words = command.split()
    for conj in ("and", "after"):
        if conj in words:
            i = words.index(conj)
            first, second = _phrase(words[:i], command), _phrase(words[i + 1 :], command)
            return " ".join(first + second if conj == "and" else second + first)
    return " ".join(_phrase(words, command))


@functools.cache
def all_commands() -> tuple[str, ...]:
    """All 20,910 commands in generation order: single phrases, then ``a and b``, then ``a after b``."""
    subjects = (*ACTIONS, "turn")
    verbs = [u for u in ACTIONS] + [f"{u} {d}" for u in subjects for d in TURNS]
    verbs += [f"{u} {m} {d}" for m in ("opposite", "around") for u in subjects for d in TURNS]
    phrases = verbs + [f"{v} {r}" for r in REPEATS for v in verbs]
    return tuple(phrases + [f"{a} {c} {b}" for c in ("and", "after") for a in phrases for b in phrases])


@functools.cache
def all_pairs() -> tuple[Pair, ...]:
    return tuple((c, interpret(c)) for c in all_commands())


def _addprim_split(primitive: str) -> tuple[list[Pair], list[Pair]]:
    # "turn left" as a bigram: "turn opposite left" and "turn around left" do not contain it.
    has = [f" {primitive} " in f" {c} " for c, _ in all_pairs()]
    train = [p for p, h in zip(all_pairs(), has) if not h]
    test = [p for p, h in zip(all_pairs(), has) if h and p[0] != primitive]
    copies = len(train) // (PRIMITIVE_SHARE - 1)  # copies / (len(train) + copies) = 1 / 10
    return train + [(primitive, interpret(primitive))] * copies, test


def make_split(split: str, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """(train, test) pairs of a split. ``simple``: ``random.Random(seed)`` shuffles all commands, the
    first 80 % train; every other split keeps generation order (addprim: primitive copies last)."""
    pairs = list(all_pairs())
    if split == "all":
        return pairs, []
    if split == "simple":
        random.Random(seed).shuffle(pairs)
        n_train = len(pairs) * 4 // 5
        return pairs[:n_train], pairs[n_train:]
    if split == "length":
        short = [len(a.split()) <= LENGTH_CUTOFF for _, a in pairs]
        return [p for p, s in zip(pairs, short) if s], [p for p, s in zip(pairs, short) if not s]
    if split == "addprim_jump":
        return _addprim_split("jump")
    if split == "addprim_turn_left":
        return _addprim_split("turn left")
    raise ConfigurationError(f"unknown SCAN split {split!r}; choose one of {', '.join(SPLITS)}")
