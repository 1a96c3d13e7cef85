"""Dyck-1 generator and split: properties and the statistics of docs/methods.md §1.1."""
import random

import torch

from lit_grok.data.dyck import CLOSE, IGNORE, OPEN, PAD, DyckDataModule, depths, generate_sequences, make_dyck_split


def test_sequences_are_balanced_never_negative_and_of_even_length():
    for seq in generate_sequences(500, max_pairs=12, seed=3):
        d = depths(seq)
        assert len(seq) % 2 == 0 and 2 <= len(seq) <= 24
        assert min(d) >= 0 and d[-1] == 0
        assert seq.count(OPEN) == seq.count(CLOSE) == len(seq) // 2


def test_generator_draws_only_when_both_moves_are_legal():
    # Replay the same RNG by hand: one randint per sequence, one random() per free choice.
    seqs = generate_sequences(50, max_pairs=5, seed=11)
    rng = random.Random(11)
    for seq in seqs:
        n = rng.randint(1, 5)
        assert len(seq) == 2 * n
        opens = depth = 0
        for tok in seq:
            if opens < n and depth > 0:
                assert tok == (OPEN if rng.random() < 0.55 else CLOSE)
            opens += tok == OPEN
            depth += 1 if tok == OPEN else -1


def test_reference_split_statistics():
    (x_train, y_train), (x_test, y_test) = make_dyck_split()
    assert x_train.shape == (50, 24) and x_test.shape == (5000, 24)
    assert int((y_train != IGNORE).sum()) == 576
    assert int((y_test != IGNORE).sum()) == 64_820
    train_rows = {tuple(r.tolist()) for r in x_train}
    assert len(train_rows) == 36
    assert len({tuple(r.tolist()) for r in x_test}) == 2234
    assert sum(tuple(r.tolist()) in train_rows for r in x_test) == 1221
    assert int(y_train.max()) == 9 and int(y_test.max()) == 12
    labelled = y_test[y_test != IGNORE]
    assert abs(float((labelled == 1).float().mean()) - 0.303) < 5e-4  # majority class share


def test_labels_are_depths_and_padding_is_ignored():
    (x, y), _ = make_dyck_split()
    for xi, yi in zip(x, y):
        n = int((xi != PAD).sum())
        assert yi[:n].tolist() == depths(xi[:n].tolist())
        assert (yi[n:] == IGNORE).all() and (xi[n:] == PAD).all()


def test_training_batches_follow_the_global_rng():
    dm = DyckDataModule()
    torch.manual_seed(5)
    batches = [b for _, b in zip(range(3), dm.train_dataloader())]
    torch.manual_seed(5)
    for x, y in batches:
        idx = torch.randint(0, 50, (50,))
        assert torch.equal(x, dm.x_train[idx]) and torch.equal(y, dm.y_train[idx])


def test_validation_order_is_test_then_train():
    dm = DyckDataModule()
    test_loader, train_loader = dm.val_dataloader()
    assert torch.equal(torch.cat([b[0] for b in test_loader]), dm.x_test)
    assert torch.equal(torch.cat([b[0] for b in train_loader]), dm.x_train)


def test_evaluation_leaves_the_global_rng_untouched():
    # A DataLoader iterator draws a base seed from the global RNG unless it owns a generator;
    # validation every 100 steps would then shift the reference trajectory.
    dm = DyckDataModule()
    torch.manual_seed(0)
    for loader in dm.val_dataloader() + [dm.test_dataloader()]:
        for _ in loader:
            pass
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))
