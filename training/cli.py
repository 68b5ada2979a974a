"""The `python -m training` command line: one typer app, one module per command."""

from __future__ import annotations

import importlib

import typer

# name -> (module, function). Each command lives beside the code it drives so the
# CLI layer holds no logic; modules are imported when the app is built, not at import.
COMMANDS: dict[str, tuple[str, str]] = {
    "build-bank": ("training.bank.build", "build_bank_command"),
    "import-bank": ("training.bank.importer", "import_bank_command"),
    "train-encoder": ("training.encoders.train", "train_encoder_command"),
    "train": ("training.train", "train_command"),
    "sample": ("training.sample", "sample_command"),
    "eval": ("training.evaluate", "eval_command"),
    "import-official": ("training.official.importer", "import_official_command"),
}


def build_app() -> typer.Typer:
    """Assemble the typer app from the command table."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, help="GMem: build banks, train, sample.")
    for name, (module, attr) in COMMANDS.items():
        app.command(name)(getattr(importlib.import_module(module), attr))
    return app


def main() -> None:
    build_app()()
