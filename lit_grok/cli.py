"""The ``lit-grok`` command: LightningCLI (fit / validate / test) plus ``scan-export`` and ``report``.

A configuration mistake caught by lit-grok's own validation is reported as one line naming the fix;
any other failure keeps its full traceback.
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI

OUR_CODE = tuple(str(Path(__file__).resolve().parents[1] / pkg) for pkg in ("lit_grok", "callbacks"))


def innermost(exc: BaseException) -> BaseException:
    """The exception at the root of a chain (jsonargparse wraps errors raised by constructors)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return exc


def raised_by_our_validation(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(OUR_CODE) and isinstance(
        exc, (ValueError, TypeError, KeyError, FileNotFoundError)
    )


class LitGrokCLI(LightningCLI):
    """LightningCLI plus a top-level ``threads``: torch's CPU threads, set before anything is built.

    The order of floating-point reductions depends on the thread count, and so does the late trajectory
    of a CPU run (spec §14.1); the Dyck configs pin 1 thread, the setting of the paper's numbers.
    """

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        """Any LightningModule / LightningDataModule by class path; ``kwargs`` go to ``LightningCLI``."""
        super().__init__(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         args=args, save_config_kwargs={"overwrite": True}, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--threads", type=Optional[int], default=None,
                            help="torch intra-op CPU threads (default: torch's own choice)")

    def before_instantiate_classes(self) -> None:
        threads = (self.config[self.subcommand] if self.subcommand else self.config).get("threads")
        if threads is None:
            return
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (or null for torch's default), got {threads}")
        torch.set_num_threads(threads)


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
        LitGrokCLI(args=argv)
    except Exception as exc:  # noqa: BLE001 - reduced to one line only when it is our own validation error
        root = innermost(exc)
        if not raised_by_our_validation(root):
            raise
        message = root.args[0] if isinstance(root, KeyError) and root.args else root
        print(f"lit-grok: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
