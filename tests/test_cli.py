"""The ``lit-grok`` command: every config runs, configs round-trip, bad input is one clear line."""
from pathlib import Path

import pytest
import torch

from lit_grok.cli import main

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


SMALL_SCAN_BATCHES = ["--data.init_args.batch_size=16", "--data.init_args.eval_batch_size=16"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_fast_dev_run_of_every_config(config):
    # The SCAN smoke keeps the full model but small batches: one step, one validation batch per set.
    smaller = SMALL_SCAN_BATCHES if config.stem.startswith("scan") else []
    main(["fit", "--config", str(config), "--trainer.fast_dev_run=1", *smaller, *QUIET])


def print_config(capsys, config):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_print_config_round_trip(capsys, tmp_path, config):
    printed = print_config(capsys, config)
    assert "class_path" in printed
    (tmp_path / "printed.yaml").write_text(printed)
    assert print_config(capsys, tmp_path / "printed.yaml") == printed


def cli_error(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, *QUIET])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "Traceback" not in "\n".join(err)
    return err[-1]


def test_bad_input_is_one_clear_line(capsys, tmp_path):
    dyck = str(next(c for c in CONFIGS if c.stem == "dyck"))
    scan = str(next(c for c in CONFIGS if c.stem == "scan"))
    assert "model.lr must be > 0" in cli_error(capsys, "--config", dyck, "--model.init_args.lr=-0.001")
    bad_threshold = tmp_path / "bad_threshold.yaml"
    bad_threshold.write_text(Path(dyck).read_text().replace("threshold: 0.95", "threshold: 1.5"))
    assert "threshold must lie in (0, 1]" in cli_error(capsys, "--config", str(bad_threshold))
    assert "unknown SCAN split 'nope'" in cli_error(capsys, "--config", scan, "--data.init_args.split=nope")
    assert "scan-export" in cli_error(capsys, "--config", scan, f"--data.init_args.data_dir={tmp_path}")
    (tmp_path / "tasks_train_simple.txt").write_text("IN: jump OUT: I_JUMP\nthis line is broken\n")
    (tmp_path / "tasks_test_simple.txt").write_text("IN: walk OUT: I_WALK\n")
    assert "tasks_train_simple.txt:2" in cli_error(capsys, "--config", scan, f"--data.init_args.data_dir={tmp_path}")


def test_scan_export_command(tmp_path):
    main(["scan-export", "--split", "addprim_jump", "--out", str(tmp_path / "scan")])
    lines = (tmp_path / "scan" / "tasks_train_addprim_jump.txt").read_text().splitlines()
    assert len(lines) == 14_670 and lines.count("IN: jump OUT: I_JUMP") == 1_467


def test_threads_option_sets_torch_threads_before_training(capsys, monkeypatch):
    dyck = str(next(c for c in CONFIGS if c.stem == "dyck"))
    before = torch.get_num_threads()
    try:
        main(["fit", "--config", dyck, "--threads=2", "--trainer.fast_dev_run=1", *QUIET])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert "threads must be >= 1" in cli_error(capsys, "--config", dyck, "--threads=0")
