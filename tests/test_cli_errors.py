"""Bad input gets one line naming the fix; a bug inside lit-grok keeps its traceback."""
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lit_grok.cli import main
from lit_grok.models.dyck import DyckTransformer

CONFIG_DIR = Path(__file__).parents[1] / "configs"
DYCK = ["--config", str(CONFIG_DIR / "dyck.yaml")]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--data.init_args.n_total=150"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def dyck_checkpoint(tmp_path_factory):
    """last.ckpt of a 20-step Dyck run (weight decay 1.0)."""
    folder = tmp_path_factory.mktemp("run")
    main(["fit", *DYCK, *QUIET, "--trainer.max_steps=20", "--trainer.val_check_interval=10",
          f"--trainer.logger.init_args.save_dir={folder}"])
    return folder / "dyck" / "version_0" / "checkpoints" / "last.ckpt"


def one_line_error(capsys, *args):
    """Run ``lit-grok *args``; it must exit 2 with one stderr line and no traceback. Returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    (line,) = [e for e in err if e.startswith("lit-grok: error:")]
    return line


def test_a_checkpoint_of_another_model_is_named(capsys, tmp_path):
    scan_like = tmp_path / "scan.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "lit_grok.models.scan.ScanTransformer"}}, scan_like)
    line = one_line_error(capsys, "validate", *DYCK, *QUIET, f"--ckpt_path={scan_like}")
    assert "trained with model lit_grok.models.scan.ScanTransformer but the config builds lit_grok.models.dyck.DyckTransformer" in line


def test_garbage_truncated_and_missing_checkpoints(capsys, tmp_path, dyck_checkpoint):
    garbage, truncated = tmp_path / "garbage.ckpt", tmp_path / "truncated.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    data = dyck_checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for path in (garbage, truncated):
        assert f"--ckpt_path {path} is not a readable checkpoint" in one_line_error(
            capsys, "fit", *DYCK, *QUIET, f"--ckpt_path={path}")
    assert "no such file" in one_line_error(capsys, "fit", *DYCK, *QUIET, f"--ckpt_path={tmp_path / 'nope.ckpt'}")


def test_a_config_value_the_checkpoint_would_override_is_refused(capsys, dyck_checkpoint):
    line = one_line_error(capsys, "fit", *DYCK, *QUIET, "--model.init_args.weight_decay=0", f"--ckpt_path={dyck_checkpoint}")
    assert "trained with model.weight_decay=1.0 but the config asks 0.0" in line and "WeightDecaySchedule" in line
    line = one_line_error(capsys, "fit", *DYCK, *QUIET, "--data.init_args.batch_size=7", f"--ckpt_path={dyck_checkpoint}")
    assert "data.batch_size=50 but the config asks 7" in line


def test_resume_last_without_a_run_says_so(capsys):
    assert "no run under logs/dyck holds checkpoints/last.ckpt" in one_line_error(
        capsys, "fit", *DYCK, *QUIET, "--ckpt_path=last")


def test_unwritable_logs_and_negative_max_steps(capsys, tmp_path):
    (tmp_path / "a_file").write_text("")
    line = one_line_error(capsys, "fit", *DYCK, *QUIET, f"--trainer.logger.init_args.save_dir={tmp_path / 'a_file' / 'logs'}")
    assert "cannot write the run's logs" in line and "--trainer.logger.init_args.save_dir" in line
    assert "trainer.max_steps must be >= 0 (or -1: no limit), got -5" in one_line_error(
        capsys, "fit", *DYCK, *QUIET, "--trainer.max_steps=-5")


def test_a_nonfinite_loss_stops_the_run_at_that_step(capsys):
    line = one_line_error(capsys, "fit", *DYCK, *QUIET, "--model.init_args.lr=1e6", "--trainer.max_steps=100")
    assert "the training loss is nan at optimizer step" in line and "lower model.lr (now 1000000.0)" in line
    step = int(line.split("optimizer step ")[1].split(":")[0])
    assert step < 10  # the first non-finite loss, not a hundred steps later
    failed = torch.load(Path("logs/dyck/version_0/checkpoints/on_exception.ckpt"), weights_only=True)
    assert failed["global_step"] == step - 1  # the weights before the step that would have used it


def test_a_planted_bug_keeps_its_traceback(monkeypatch):
    def buggy_step(self, batch, batch_idx):
        raise ValueError("planted bug: not a validation error")

    monkeypatch.setattr(DyckTransformer, "training_step", buggy_step)
    with pytest.raises(ValueError, match="planted bug"):
        main(["fit", *DYCK, *QUIET, "--trainer.max_steps=5"])


def write_run(root, name):
    logger = TensorBoardLogger(root, name=name, version=0)
    logger.log_metrics({"val/acc": 0.5}, step=99)
    logger.finalize("success")
    return Path(root) / name / "version_0"


def test_report_inputs(capsys, tmp_path):
    for name in ("a", "b"):
        write_run(tmp_path / "logs", name)
    main(["report", str(tmp_path / "logs"), "--steps", "100", "--tags", "val/acc"])  # a folder of runs
    out = capsys.readouterr().out
    assert out.count("== ") == 2 and out.count("0.5000") == 2
    (tmp_path / "empty").mkdir()
    assert "no TensorBoard event files under" in one_line_error(capsys, "report", str(tmp_path / "empty"))
    assert "--tags val/acx: not logged by these runs; logged tags: val/acc" in one_line_error(
        capsys, "report", str(tmp_path / "logs"), "--tags", "val/acx")
    assert "does not exist; create it first" in one_line_error(
        capsys, "report", str(tmp_path / "logs" / "a" / "version_0"), "--tags", "val/acc", "--figure",
        str(tmp_path / "missing" / "f.png"))


def test_scan_export_onto_a_file(capsys, tmp_path):
    (tmp_path / "taken").write_text("")
    assert "is a file; name a folder" in one_line_error(
        capsys, "scan-export", "--split", "simple", "--out", str(tmp_path / "taken"))
