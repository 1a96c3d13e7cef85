"""The ``lit-grok`` command: LightningCLI (fit / validate / test) plus ``scan-export``, ``report`` and ``sweep``.

A mistake in what was asked for (``callbacks.LitGrokError``: a bad setting, input file or checkpoint) is
reported as one line naming the fix; any other failure is a bug and keeps its full traceback.
"""
from __future__ import annotations

import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import jsonargparse
import lightning.pytorch as pl
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI
from threadpoolctl import threadpool_limits

from lit_grok.callbacks import ConfigurationError, LitGrokError

CALLBACK_NAMES = (  # the named callback slots of the configs: --callbacks.NAME.ARG VALUE sets one argument
    "grok", "recorder", "spectrum", "decomposer", "ablation", "perturbation", "probes", "probes_raw", "fourier",
    "fourier_encoder", "fourier_decoder", "probes_a", "depth_geometry", "component_effect", "qk_directions",
    "loss_decomposition", "wd_schedule", "checkpoints", "interrupt", "rng",
)
JSONARGPARSE = Path(jsonargparse.__file__).parent
HPARAMS_IGNORED = ("_instantiator", "_class_path")  # written by LightningCLI beside the real hyperparameters


class LitGrokCLI(LightningCLI):
    """LightningCLI plus ``threads`` (torch's and BLAS's CPU threads, set before anything is built), named ``callbacks``
    (``--callbacks.recorder.window 3`` sets one argument of one callback) and checks of ``--ckpt_path``.

    The order of floating-point reductions depends on the thread count, and so does the late trajectory
    of a CPU run; the Dyck configs pin 1 thread, the setting of the paper's numbers.
    """

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        """Any LightningModule / LightningDataModule by class path; ``kwargs`` go to ``LightningCLI``."""
        super().__init__(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         args=args, save_config_kwargs={"overwrite": True}, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--threads", type=Optional[int], default=None,
                            help="CPU threads of torch (intra-op) and of numpy / scipy's BLAS (default: their own choice)")
        for name in CALLBACK_NAMES:
            parser.add_lightning_class_args(Callback, f"callbacks.{name}", subclass_mode=True, required=False)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        threads = config.get("threads")
        if threads is not None:
            if threads < 1:
                raise ConfigurationError(f"threads must be >= 1 (or null for torch's default), got {threads}")
            torch.set_num_threads(threads)
            threadpool_limits(threads, user_api="blas")  # numpy's and scipy's too: the probes' scikit-learn fits
        max_steps = config.get("trainer", {}).get("max_steps")
        if max_steps is not None and max_steps < -1:
            raise ConfigurationError(f"trainer.max_steps must be >= 0 (or -1: no limit), got {max_steps}")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        named = self._get(self.config_init, "callbacks") or {}
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(trainer_config, [cb for cb in named.values() if cb is not None])

    def before_fit(self) -> None:
        check_log_dir(self.trainer)

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path last`` and check the checkpoint against the config, before LightningCLI copies
        the checkpoint's model hyperparameters into the config (it would override the config's silently)."""
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            if subcommand == "fit" and config.get("ckpt_path") == "last":
                config.ckpt_path = str(resume_latest_run(config))
            if config.get("ckpt_path") not in (None, "best", "last", "hpc", "registry"):
                check_checkpoint(config.ckpt_path, config)
        super()._parse_ckpt_path()


def check_log_dir(trainer: pl.Trainer) -> None:
    """The logger's folder can be written, or one line naming the option that sets it."""
    logger = trainer.logger
    root = getattr(logger, "root_dir", None) if logger is not None else trainer.default_root_dir
    if root is None:
        return
    try:
        os.makedirs(root, exist_ok=True)
        writable = os.access(root, os.W_OK | os.X_OK)
    except OSError:
        writable = False
    if not writable:
        raise ConfigurationError(f"cannot write the run's logs under {root}: choose a writable "
                                 "--trainer.logger.init_args.save_dir (or run from a writable folder)")


def resume_latest_run(config: Namespace) -> Path:
    """``--ckpt_path last``: the newest run folder of the config's logger holding ``checkpoints/last.ckpt``; the
    logger is set to that folder's version, so the resumed run logs and checkpoints where it left off."""
    logger = config.get("trainer", {}).get("logger")
    init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
    if init_args is None or init_args.get("save_dir") is None or "version" not in init_args:
        raise ConfigurationError("--ckpt_path last needs a TensorBoardLogger or CSVLogger in the config (it finds the "
                                 "run by the logger's save_dir / name); otherwise pass the checkpoint's path")
    root = Path(init_args.save_dir) / (init_args.get("name") or "")
    versions = sorted(
        (int(m.group(1)), d) for d in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", d.name))
    )
    resumable = [(n, d) for n, d in versions if (d / "checkpoints" / "last.ckpt").is_file()]
    if not resumable:
        raise ConfigurationError(f"--ckpt_path last: no run under {root} holds checkpoints/last.ckpt; start without "
                                 "--ckpt_path, or pass a checkpoint's path")
    number, folder = resumable[-1]
    init_args.version = number
    return folder / "checkpoints" / "last.ckpt"


def check_checkpoint(path: str | Path, config: Namespace) -> None:
    """The checkpoint is readable and was made by the configured model and data with the same hyperparameters.

    Lightning restores weights, optimizer and callback states from it, and LightningCLI copies its model
    hyperparameters into the config, so a value of the config that differs would be overridden silently
    (a weight decay of 0 asked on the command line, for instance).
    """
    if not Path(path).is_file():
        raise ConfigurationError(f"--ckpt_path {path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read it means the same thing
        reason = str(exc).strip().splitlines()[0]
        raise ConfigurationError(f"--ckpt_path {path} is not a readable checkpoint ({type(exc).__name__}: {reason}); "
                                 "pass a .ckpt written by lit-grok fit") from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigurationError(f"--ckpt_path {path} holds no Lightning checkpoint; pass a .ckpt written by lit-grok fit")
    for section, key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
        saved, configured = dict(checkpoint.get(key) or {}), config.get(section)
        if not saved or not isinstance(configured, Namespace):
            continue
        saved_class, wanted_class = saved.pop("_class_path", None), configured.get("class_path")
        if saved_class and wanted_class and saved_class != wanted_class:
            raise ConfigurationError(f"--ckpt_path {path} was trained with {section} {saved_class} but the config builds "
                                     f"{wanted_class}: use the config the checkpoint was made with")
        init_args = configured.get("init_args") or Namespace()
        for name, value in sorted(saved.items()):
            asked = init_args.get(name)
            if name in HPARAMS_IGNORED or asked is None or same_value(value, asked):
                continue  # None: a value the module derives (from the data, say)
            raise ConfigurationError(
                f"--ckpt_path {path} was trained with {section}.{name}={value!r} but the config asks {asked!r}: "
                f"resume with the checkpoint's value{change_hint(section, name)}"
            )


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def change_hint(section: str, key: str) -> str:
    if section == "model" and key == "weight_decay":
        return "; to change it after resuming use callbacks.WeightDecaySchedule (milestones: {STEP: VALUE})"
    return ""


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] == "scan-export":
            from lit_grok.data.scan import scan_export_main

            scan_export_main(args[1:])
            return
        if args and args[0] == "report":
            from lit_grok.report import report_main

            report_main(args[1:])
            return
        if args and args[0] == "sweep":
            from lit_grok.sweep import sweep_main

            sweep_main(args[1:])
            return
        LitGrokCLI(args=argv)
    except Exception as exc:  # noqa: BLE001 - reduced to one line only when it is one of our own errors
        ours = our_error(exc)
        if ours is None:
            raise
        print(f"lit-grok: error: {ours}", file=sys.stderr)
        sys.exit(ours.exit_code)


def our_error(exc: Optional[BaseException]) -> Optional[LitGrokError]:
    """The LitGrokError behind ``exc``: itself, or the one jsonargparse wrapped (it re-raises a constructor's
    error as a ValueError of its own); None for anything else, which is a bug to show in full."""
    while exc is not None:
        if isinstance(exc, LitGrokError):
            return exc
        if not raised_by_jsonargparse(exc):
            return None
        exc = exc.__cause__ or exc.__context__
    return None


def raised_by_jsonargparse(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(frames[-1].filename).is_relative_to(JSONARGPARSE)


if __name__ == "__main__":
    main()
