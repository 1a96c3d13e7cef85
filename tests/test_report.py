"""``lit-grok report`` reads back what the loggers wrote and draws the lifecycle figure."""
import math

import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks import ConfigurationError
from lit_grok.cli import main
from lit_grok.report import median_over, read_scalars, value_at


def test_report_reads_scalars_and_draws(tmp_path, capsys):
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    for step in (100, 200, 300):
        logger.log_metrics({"edge/grad_frac_v1": step / 1000, "edge/sigma_1": 2.0}, step=step)
        logger.log_metrics({"val/acc": 0.9 + step / 10_000}, step=step - 1)  # Lightning's validation step
    logger.log_metrics({"grok/step": 200.0}, step=200)
    logger.finalize("success")
    run = tmp_path / "run" / "version_0"
    scalars = read_scalars(run)
    assert value_at(scalars, "edge/grad_frac_v1", 200) == pytest.approx(0.2)
    assert value_at(scalars, "val/acc", 300) == pytest.approx(0.93)  # written at 299, describes step 300
    assert math.isnan(value_at(scalars, "edge/grad_frac_v1", 400))
    main(["report", str(run), "--steps", "200", "--tags", "val/acc", "edge/grad_frac_v1"])
    out = capsys.readouterr().out
    assert "grok step: 200" in out and "0.9200" in out and "0.2000" in out
    assert (run / "lifecycle.png").stat().st_size > 10_000


def test_report_without_events_says_what_to_pass(tmp_path):
    with pytest.raises(ConfigurationError, match="no TensorBoard event files"):
        read_scalars(tmp_path)


def test_median_over_a_window_ignores_one_spike_and_other_steps(tmp_path, capsys):
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    accs = {99: 0.97, 199: 0.98, 299: 0.40, 399: 0.99}  # validations of steps 100..400; a spike at 300
    for step, acc in accs.items():
        logger.log_metrics({"val/acc": acc}, step=step)
    for step in (100, 300):
        logger.log_metrics({"probe/r2": step / 1000}, step=step)  # a callback: written at its own step
    logger.finalize("success")
    run = tmp_path / "run" / "version_0"
    scalars = read_scalars(run)
    assert value_at(scalars, "val/acc", 300) == pytest.approx(0.40)
    assert median_over(scalars, "val/acc", 300, 200) == pytest.approx(0.97)  # steps 100, 200, 300 — not 400
    assert median_over(scalars, "val/acc", 400, 100) == pytest.approx((0.40 + 0.99) / 2)  # steps 300, 400
    assert median_over(scalars, "probe/r2", 300, 100) == pytest.approx(0.3)  # the one value in steps 200..300
    assert math.isnan(median_over(scalars, "val/acc", 50, 10))
    main(["report", str(run), str(run), "--steps", "300", "--tags", "val/acc", "--window", "200"])
    out = capsys.readouterr().out
    assert out.count("== ") == 2 and "median over steps s − 200 .. s" in out and "0.9700" in out and "0.4000" not in out


def test_report_rejects_bad_window_and_one_figure_for_several_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path), "--window", "-1"])
    assert "--window must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path), str(tmp_path), "--figure", "x.png"])
    assert "--figure names one file" in capsys.readouterr().err
