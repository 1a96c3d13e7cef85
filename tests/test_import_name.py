"""``lit_grok.callbacks`` is the package; ``callbacks`` is the same package under its short name (one copy of every
class), and a user's own ``callbacks.py`` in the working directory shadows only the short name."""
import os
import subprocess
import sys
from pathlib import Path

import callbacks
import lit_grok.callbacks
from callbacks.update_recorder import UpdateRecorder
from lit_grok.callbacks.utils import row_analysis

REPO = Path(__file__).parents[1]


def test_both_names_are_one_package():
    assert callbacks is lit_grok.callbacks
    assert UpdateRecorder is lit_grok.callbacks.UpdateRecorder
    import callbacks.utils.row_analysis as short

    assert short is row_analysis
    assert isinstance(callbacks.GramSpectrum(), lit_grok.callbacks.RowAnalysis)


def _python(cwd, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO))  # this checkout's packages, after the working directory
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_a_callbacks_py_in_the_working_directory_shadows_only_the_short_name(tmp_path):
    (tmp_path / "callbacks.py").write_text("MINE = 1\n")
    code = (
        "import callbacks, lit_grok.callbacks as lc\n"
        "from lit_grok.callbacks import UpdateRecorder\n"
        "from lit_grok.cli import main\n"
        "assert callbacks.MINE == 1 and UpdateRecorder is lc.UpdateRecorder\n"
    )
    done = _python(tmp_path, "-c", code)
    assert done.returncode == 0, done.stderr


def test_cli_beside_a_callbacks_py_with_both_class_path_names(tmp_path):
    """The ``lit-grok`` script (its sys.path holds no working directory: ``python -P``) runs the shipped config,
    whose class paths say ``callbacks.X``, with one callback named ``lit_grok.callbacks.X``."""
    (tmp_path / "callbacks.py").write_text("MINE = 1\n")
    args = [
        "-P", "-m", "lit_grok.cli", "fit", "--config", str(REPO / "configs" / "dyck.yaml"),
        "--callbacks.spectrum.class_path=lit_grok.callbacks.GramSpectrum", "--trainer.fast_dev_run=1",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ]
    done = _python(tmp_path, *args)
    assert done.returncode == 0, done.stderr[-2000:]
