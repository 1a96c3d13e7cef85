"""WeightDecaySchedule: the new ω reaches exactly optimizer step s + 1, nothing else changes; state kept or reset."""
from types import SimpleNamespace

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback

from callbacks import ConfigurationError, WeightDecaySchedule
from probe_toy_model import ToyEncoder, trainer


class OptimizerSpy(Callback):
    """Right before each optimizer step: (step number, per-group hyperparameters, Adam step count of one param)."""

    def __init__(self) -> None:
        self.seen = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        first = optimizer.param_groups[0]["params"][0]
        count = float(optimizer.state[first]["step"]) if first in optimizer.state else 0.0
        self.seen.append((trainer.global_step + 1, groups, count))


def run(tmp_path, schedule, steps=6):
    torch.manual_seed(0)
    spy = OptimizerSpy()
    tr = trainer(tmp_path, [schedule, spy], max_steps=steps)
    tr.fit(ToyEncoder(groups=2, weight_decay=0.1))
    return spy.seen, tr


@pytest.mark.parametrize("reset", [False, True])
def test_new_weight_decay_starts_at_step_s_plus_one_and_nothing_else_changes(tmp_path, reset):
    seen, tr = run(tmp_path, WeightDecaySchedule({3: 0.0}, param_groups=[1], reset_optimizer_state=reset))
    before = seen[0][1]
    for number, groups, count in seen:
        want_wd = 0.0 if number >= 4 else 0.1  # milestone 3: optimizer step 4 is the first with ω' = 0
        assert groups[1]["weight_decay"] == want_wd
        assert groups[0] == before[0]  # the other group is untouched
        assert {k: v for k, v in groups[1].items() if k != "weight_decay"} == \
            {k: v for k, v in before[1].items() if k != "weight_decay"}  # lr, betas, eps, ... unchanged
        # the Adam step counter before step n is n - 1, unless the state was cleared before step 4
        assert count == (number - 4 if reset and number >= 4 else number - 1)
    assert [n for n, _, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert tr.logger.merged("wd/") == {3: {"wd/group1": 0.0}}


def test_all_groups_by_default_and_several_milestones(tmp_path):
    seen, tr = run(tmp_path, WeightDecaySchedule({0: 2.0, 4: 0.5}))
    wds = [[g["weight_decay"] for g in groups] for _, groups, _ in seen]
    assert wds == [[2.0, 2.0]] * 4 + [[0.5, 0.5]] * 2
    assert tr.logger.merged("wd/") == {0: {"wd/group0": 2.0, "wd/group1": 2.0}, 4: {"wd/group0": 0.5, "wd/group1": 0.5}}


def test_resume_keeps_fired_milestones_and_rejects_past_ones(tmp_path):
    torch.manual_seed(0)
    schedule = WeightDecaySchedule({2: 0.0})
    first = trainer(tmp_path, [schedule], max_steps=4)
    first.fit(ToyEncoder(weight_decay=0.1))
    ckpt = tmp_path / "at4.ckpt"
    first.save_checkpoint(ckpt)
    assert schedule.state_dict()["schedule"] == {"done": ["step_2"]} and schedule.fired == {2}
    resumed, spy = WeightDecaySchedule({2: 0.0}), OptimizerSpy()
    trainer(tmp_path, [resumed, spy], max_steps=6).fit(ToyEncoder(weight_decay=0.1), ckpt_path=ckpt)
    assert resumed.fired == {2} and [g[0]["weight_decay"] for _, g, _ in spy.seen] == [0.0, 0.0]  # ω' restored
    with pytest.raises(ConfigurationError, match=r"a schedule step in the past: \[.step_3.\] < global_step 4"):
        trainer(tmp_path, [WeightDecaySchedule({3: 0.0, 8: 1.0})], max_steps=6).fit(ToyEncoder(), ckpt_path=ckpt)


def test_bad_input():
    with pytest.raises(ValueError, match="weight decay must be >= 0"):
        WeightDecaySchedule({10: -0.1})
    with pytest.raises(ValueError, match="milestone steps must be integers >= 0"):
        WeightDecaySchedule({-1: 0.1})
    with pytest.raises(ValueError, match="at least one milestone"):
        WeightDecaySchedule({})
    with pytest.raises(ValueError, match="distinct indices"):
        WeightDecaySchedule({1: 0.1}, param_groups=[0, 0])
    fake = SimpleNamespace(optimizers=[torch.optim.AdamW([torch.zeros(1, requires_grad=True)])], global_step=0)
    with pytest.raises(ValueError, match="param group 1 is out of range; the optimizer has 1 groups"):
        WeightDecaySchedule({1: 0.1}, param_groups=[1]).on_fit_start(fake, None)


def test_yaml_style_configuration():
    parser = ArgumentParser()
    parser.add_class_arguments(WeightDecaySchedule, "wd")
    cfg = parser.parse_args(["--wd.milestones", "{1000: 0.0, 2000: 2.0}", "--wd.param_groups", "[0]"])
    schedule = WeightDecaySchedule(**cfg.wd)
    assert schedule.milestones == {1000: 0.0, 2000: 2.0} and schedule.param_groups == [0]
