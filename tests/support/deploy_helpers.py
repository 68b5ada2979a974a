"""Helpers shared by the deployment tests: read CLI flags, settings variables and k8s manifests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import yaml

from gmem.envvars import from_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
GMEM_VAR = re.compile(r"\bGMEM_[A-Z0-9_]+\b")


@cache
def cli_flags(module: str, *sub: str) -> frozenset[str]:
    """Long flags `python -m <module> [sub] --help` lists."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    out = subprocess.run(
        [sys.executable, "-m", module, *sub, "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"`python -m {module} {' '.join(sub)} --help` failed:\n{out.stderr[-2000:]}"
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out.stdout))


def flags_of(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def arg_after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# The package's console scripts (pyproject.toml [project.scripts]) and the modules they run.
CONSOLE_SCRIPTS = {
    "gmem-bank": "services.bank",
    "gmem-generator": "services.generator",
    "gmem-train": "training",
    "gmem": "gmem",
}


def service_module(argv: list[str]) -> str:
    if argv and argv[0] in CONSOLE_SCRIPTS:
        return CONSOLE_SCRIPTS[argv[0]]
    assert argv[:2] == ["python", "-m"], (
        f"expected `python -m <service> ...` or a console script, got {argv[:3]}"
    )
    return argv[2]


@cache
def settings_env_names() -> frozenset[str]:
    return frozenset(v.name for v in from_settings())


def k8s_docs() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def k8s_objects(kind: str) -> list[dict]:
    return [d for docs in k8s_docs().values() for d in docs if d.get("kind") == kind]


def one(kind: str, name: str) -> dict:
    found = [d for d in k8s_objects(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
    return found[0]


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def requirement_names_of(lines: list[str]) -> set[str]:
    """Distribution names of requirement strings (``uvicorn[standard]>=0.29`` -> ``uvicorn``)."""
    return {re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-") for line in lines}


@cache
def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def project_dependencies() -> list[str]:
    return list(_pyproject()["project"]["dependencies"])


def project_extras() -> dict[str, list[str]]:
    return {k: list(v) for k, v in _pyproject()["project"]["optional-dependencies"].items()}
