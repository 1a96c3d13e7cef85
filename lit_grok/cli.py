"""The ``lit-grok`` command: LightningCLI (fit / validate / test) plus ``scan-export``."""
from __future__ import annotations

import sys

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "scan-export":
        from lit_grok.data.scan import scan_export_main

        scan_export_main(argv[1:])
        return
    LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
