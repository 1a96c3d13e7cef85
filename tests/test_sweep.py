"""``lit-grok sweep``: a 2 × 2 grid of tiny Dyck runs on a local Ray instance, skipped once finished."""
import json
from pathlib import Path

import pytest

from callbacks import ConfigurationError
from lit_grok.cli import main
from lit_grok.report import read_scalars, value_at
from lit_grok.sweep import make_trials, parse_grid

CONFIG = str(Path(__file__).parents[1] / "configs" / "dyck.yaml")
TINY = ["--trainer.max_steps=4", "--trainer.val_check_interval=2", "--data.init_args.n_total=120",
        "--callbacks.recorder.interval=1", "--trainer.log_every_n_steps=1", "--trainer.enable_model_summary=false"]


def test_grid_names_and_overrides(tmp_path):
    trials = make_trials([1, 2], parse_grid(["model.init_args.weight_decay=1.0,0.0"]), tmp_path)
    assert [t.name for t in trials] == ["seed=1,weight_decay=1.0", "seed=1,weight_decay=0.0",
                                        "seed=2,weight_decay=1.0", "seed=2,weight_decay=0.0"]
    assert trials[1].overrides == ("--seed_everything=1", "--model.init_args.weight_decay=0.0")
    assert trials[1].folder == tmp_path / "seed=1,weight_decay=0.0" / "version_0"
    with pytest.raises(ConfigurationError, match="write KEY=V1,V2"):
        parse_grid(["model.init_args.weight_decay"])


def test_a_two_by_two_sweep_runs_then_skips(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--config", CONFIG, "--seeds", "1", "2", "--grid", "model.init_args.weight_decay=1.0,0.0",
            "--out", str(out), "--trial-timeout=400", *TINY]
    main(args)
    printed = capsys.readouterr().out
    assert printed.count("[queued]") == 4 and "4 trials: 4 finished, 0 failed" in printed
    for name, wd in (("seed=1,weight_decay=1.0", 1.0), ("seed=2,weight_decay=0.0", 0.0)):
        run = out / name / "version_0"
        assert json.loads((run / "done.json").read_text())["rc"] == 0
        norm_wd = value_at(read_scalars(run), "update/norm_wd", 4)
        assert (norm_wd > 0) if wd else (norm_wd == 0)
    seed1, seed2 = (read_scalars(out / f"seed={s},weight_decay=1.0" / "version_0") for s in (1, 2))
    assert value_at(seed1, "update/norm_total", 4) != value_at(seed2, "update/norm_total", 4)  # the seeds differ

    main(args)  # a rerun: everything finished, nothing runs
    printed = capsys.readouterr().out
    assert printed.count("[skip]") == 4 and "[queued]" not in printed
