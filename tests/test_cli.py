"""The ``lit-grok`` command: every config runs, configs round-trip, bad input is one clear line."""
from pathlib import Path

import pytest
import torch
import yaml
from threadpoolctl import threadpool_info, threadpool_limits

from lit_grok.cli import main
from lit_grok.models import common

CONFIG_DIR = Path(__file__).parents[1] / "configs"
# Each shipped experiment: its base config, then the overrides (as the README runs them)
EXPERIMENTS = {
    "dyck": ["dyck"], "dyck_nowd": ["dyck", "dyck_nowd"], "dyck_causal": ["dyck", "dyck_causal"],
    "dyck_causal_memo": ["dyck", "dyck_causal", "dyck_causal_memo"],
    "dyck_wd_after1000": ["dyck", "dyck_wd_after1000"],
    "scan": ["scan"], "scan_nowd": ["scan", "scan_nowd"], "scan_causal": ["scan", "scan_causal"],
    "scan_bf16_nowd": ["scan", "scan_bf16", "scan_nowd"],
    "modadd": ["modadd"], "modadd_nowd": ["modadd", "modadd_nowd"], "modadd_causal": ["modadd", "modadd_causal"],
}
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


SMALL_SCAN_BATCHES = ["--data.init_args.batch_size=16", "--data.init_args.eval_batch_size=16"]


def config_args(experiment):
    return [arg for name in EXPERIMENTS[experiment] for arg in ("--config", str(CONFIG_DIR / f"{name}.yaml"))]


def test_every_config_file_belongs_to_an_experiment():
    used = {name for chain in EXPERIMENTS.values() for name in chain}
    assert used == {p.stem for p in CONFIG_DIR.glob("*.yaml")}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_of_every_config(experiment, monkeypatch):
    # The SCAN smoke keeps the full model but small batches: one step, one validation batch per set.
    smaller = SMALL_SCAN_BATCHES if experiment.startswith("scan") else []
    monkeypatch.setattr(common, "cpu_emulates", lambda precision: False)  # bf16 runs here even on an AVX2 CPU
    main(["fit", *config_args(experiment), "--trainer.fast_dev_run=1", *smaller, *QUIET])


def print_config(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_print_config_round_trip(capsys, tmp_path, experiment):
    printed = print_config(capsys, *config_args(experiment))
    assert "class_path" in printed
    (tmp_path / "printed.yaml").write_text(printed)
    assert print_config(capsys, "--config", str(tmp_path / "printed.yaml")) == printed


def test_overrides_merge_into_the_base_and_set_one_callback_argument(capsys):
    printed = yaml.safe_load(print_config(capsys, *config_args("dyck_wd_after1000"), "--callbacks.recorder.window=3",
                                          "--callbacks.wd_schedule.milestones={1000: 0.5}", "--callbacks.fourier=null"))
    callbacks = printed["callbacks"]
    assert callbacks["recorder"]["init_args"] == {**callbacks["recorder"]["init_args"], "interval": 100, "window": 3}
    assert callbacks["wd_schedule"]["init_args"]["milestones"] == {"1000": 0.5}  # YAML keys; the int is parsed at build
    assert callbacks["fourier"] is None and callbacks["probes"]["init_args"]["steps"] == [1000, 4000]
    assert printed["trainer"]["max_steps"] == 4000 and printed["model"]["init_args"]["weight_decay"] == 1.0
    assert printed["trainer"]["logger"]["init_args"]["name"] == "dyck_wd_after1000_0"


def cli_error(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, *QUIET])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "Traceback" not in "\n".join(err)
    return err[-1]


def test_bad_input_is_one_clear_line(capsys, tmp_path):
    dyck, scan = str(CONFIG_DIR / "dyck.yaml"), str(CONFIG_DIR / "scan.yaml")
    assert "model.lr must be > 0" in cli_error(capsys, "--config", dyck, "--model.init_args.lr=-0.001")
    bad_threshold = tmp_path / "bad_threshold.yaml"
    bad_threshold.write_text(Path(dyck).read_text().replace("threshold: 0.95", "threshold: 1.5"))
    assert "threshold must lie in (0, 1]" in cli_error(capsys, "--config", str(bad_threshold))
    assert "unknown SCAN split 'nope'" in cli_error(capsys, "--config", scan, "--data.init_args.split=nope")
    assert "scan-export" in cli_error(capsys, "--config", scan, f"--data.init_args.data_dir={tmp_path}")
    (tmp_path / "tasks_train_simple.txt").write_text("IN: jump OUT: I_JUMP\nthis line is broken\n")
    (tmp_path / "tasks_test_simple.txt").write_text("IN: walk OUT: I_WALK\n")
    assert "tasks_train_simple.txt:2" in cli_error(capsys, "--config", scan, f"--data.init_args.data_dir={tmp_path}")


def test_low_precision_that_this_cpu_only_emulates_is_refused_before_the_first_step(capsys, monkeypatch):
    emulated = []
    monkeypatch.setattr(common, "cpu_emulates", lambda precision: emulated.append(precision) or precision != "32-true")
    bf16 = config_args("scan_bf16_nowd")
    assert "use trainer.precision=32-true (for SCAN: leave out configs/scan_bf16.yaml)" in cli_error(capsys, *bf16)
    assert emulated == ["bf16-mixed"]
    main(["fit", *config_args("scan"), "--trainer.fast_dev_run=1", *SMALL_SCAN_BATCHES, *QUIET])  # fp32 runs
    assert emulated[1:] == ["32-true"]


def test_scan_export_command(tmp_path):
    main(["scan-export", "--split", "addprim_jump", "--out", str(tmp_path / "scan")])
    lines = (tmp_path / "scan" / "tasks_train_addprim_jump.txt").read_text().splitlines()
    assert len(lines) == 14_670 and lines.count("IN: jump OUT: I_JUMP") == 1_467


def blas_threads() -> int:
    return max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")


def test_threads_option_sets_torch_and_blas_threads_before_training(capsys, monkeypatch):
    dyck = str(CONFIG_DIR / "dyck.yaml")
    before, blas_before = torch.get_num_threads(), blas_threads()
    try:
        for threads in (2, 1):  # the tests run at 1 (conftest)
            main(["fit", "--config", dyck, f"--threads={threads}", "--trainer.fast_dev_run=1", *QUIET])
            assert torch.get_num_threads() == threads and blas_threads() == threads
    finally:
        torch.set_num_threads(before)
        threadpool_limits(blas_before, user_api="blas")
    assert "threads must be >= 1" in cli_error(capsys, "--config", dyck, "--threads=0")
