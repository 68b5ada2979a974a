"""Every ``GMEM_*`` environment variable the project reads, collected from the code itself.

Two sources: the pydantic-settings classes of the services and the CLI
(``services/*/settings.py``, ``gmem/settings.py``) and the typer options of the
training commands that declare an ``envvar``. README.md's configuration table is
generated from this (``python -m gmem.envvars``) and a test checks it stays complete.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

# Modules holding one settings class each; listed, not discovered, so importing this
# module never imports torch.
SETTINGS_MODULES: tuple[str, ...] = (
    "services.bank.settings",
    "services.generator.settings",
    "services.playground.settings",
    "gmem.settings",
)


@dataclass(frozen=True)
class EnvVar:
    """One variable: its name, who reads it, its default and what it means."""

    name: str
    reader: str
    default: str
    description: str


def settings_classes() -> list[type[BaseSettings]]:
    """The BaseSettings subclasses defined in SETTINGS_MODULES."""
    out = []
    for mod_name in SETTINGS_MODULES:
        mod = importlib.import_module(mod_name)
        for obj in vars(mod).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseSettings)
                and obj is not BaseSettings
                and obj.__module__ == mod_name
            ):
                out.append(obj)
    return out


def _field_env_names(cls: type[BaseSettings], name: str) -> list[str]:
    field = cls.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    if isinstance(alias, str):
        return [alias]
    prefix = cls.model_config.get("env_prefix", "")
    return [(prefix + name).upper()]


def from_settings() -> list[EnvVar]:
    """Variables of the settings classes, in class and field order."""
    out = []
    for cls in settings_classes():
        reader = f"{cls.__module__}.{cls.__name__}"
        for name, field in cls.model_fields.items():
            default = (
                "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
            )
            for env in _field_env_names(cls, name):
                out.append(EnvVar(env, reader, default, field.description or ""))
    return out


def from_training_cli() -> list[EnvVar]:
    """Variables declared as typer ``envvar`` on `python -m training` commands (imports torch)."""
    import typer.main

    from training.cli import build_app

    out = []
    group = typer.main.get_command(build_app())
    for cmd_name, cmd in group.commands.items():  # type: ignore[attr-defined]
        for param in cmd.params:
            envs = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            for env in envs:
                if env and env.startswith("GMEM_"):
                    flag = max(param.opts, key=len) if param.opts else param.name
                    raw = getattr(param.default, "value", param.default)  # enums show their value
                    default = "" if raw is None or callable(raw) else repr(raw)
                    out.append(
                        EnvVar(
                            env,
                            f"python -m training {cmd_name} {flag}",
                            default,
                            getattr(param, "help", "") or "",
                        )
                    )
    return out


def all_variables(include_training: bool = True) -> list[EnvVar]:
    """Every variable, first seen first; a name read by several places appears once per reader."""
    found = from_settings() + (from_training_cli() if include_training else [])
    seen: set[tuple[str, str]] = set()
    unique = []
    for v in found:
        if (v.name, v.reader) not in seen:
            seen.add((v.name, v.reader))
            unique.append(v)
    return unique


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(variables: list[EnvVar]) -> str:
    """Settings rows one per class; a training variable read by several commands becomes one row."""
    rows = ["| variable | read by | default | meaning |", "|---|---|---|---|"]
    merged: dict[str, list[EnvVar]] = {}
    for v in variables:
        key = v.name if v.reader.startswith("python -m training") else f"{v.name} {v.reader}"
        merged.setdefault(key, []).append(v)
    for group in merged.values():
        first = group[0]
        readers = "<br>".join(f"`{v.reader.removeprefix('python -m training ')}`" for v in group)
        if first.reader.startswith("python -m training"):
            readers = "`python -m training`: " + readers
        defaults = {v.default for v in group}
        default = (
            "differs per command" if len(defaults) > 1 else (f"`{first.default}`" if first.default else "")
        )
        descs = {v.description for v in group}
        desc = (
            _cell(first.description)
            if len(descs) == 1
            else "<br>".join(
                f"{v.reader.removeprefix('python -m training ').split()[0]}: {_cell(v.description)}"
                for v in group
            )
        )
        rows.append(f"| `{first.name}` | {readers} | {_cell(default)} | {desc} |")
    return "\n".join(rows)


BEGIN, END = "<!-- envvars:begin -->", "<!-- envvars:end -->"


def write_into(path: Path, table: str) -> None:
    """Replace what lies between the envvars markers of a markdown file with ``table``."""
    text = path.read_text()
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{path}: markers {BEGIN} ... {END} not found; add them where the table goes")
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    """Print the table, or with ``--write FILE`` put it between the markers in FILE."""
    args = sys.argv[1:] if argv is None else argv
    table = markdown_table(all_variables())
    if args[:1] == ["--write"] and len(args) == 2:
        write_into(Path(args[1]), table)
    elif args:
        raise SystemExit("usage: python -m gmem.envvars [--write README.md]")
    else:
        print(table)


if __name__ == "__main__":
    main()
