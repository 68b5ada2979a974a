"""The package and the container files agree with each other and with requirements.txt.

requirements.txt / requirements-dev.txt stay the source of truth for the venv (scripts/setup.sh);
pyproject.toml must say the same. The real installs and image builds are in test_containers.py.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
TORCH = {"torch", "torchvision", "timm", "triton"}


def requirement_lines(path: Path) -> set[str]:
    out = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.add(line.replace(" ", ""))
    return out


def name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_runtime_dependencies_are_exactly_requirements_txt():
    extras = PROJECT["optional-dependencies"]
    declared = set(PROJECT["dependencies"])
    for extra in ("bank", "generator", "encoder", "training", "playground"):
        declared |= set(extras[extra])
    assert {r.replace(" ", "") for r in declared} == requirement_lines(ROOT / "requirements.txt")


def test_dev_extra_is_requirements_dev_txt_plus_every_runtime_extra():
    dev = PROJECT["optional-dependencies"]["dev"]
    own = [r for r in dev if name(r) == name(PROJECT["name"])]
    assert own == ["gmem-serving[bank,generator,encoder,training,playground]"]
    assert {r for r in dev if r not in own} == requirement_lines(ROOT / "requirements-dev.txt")


def test_core_and_bank_extra_pull_no_torch():
    core = {name(r) for r in PROJECT["dependencies"]}
    bank = {name(r) for r in PROJECT["optional-dependencies"]["bank"]}
    assert not (core | bank) & TORCH
    assert {"torch", "torchvision"} <= {name(r) for r in PROJECT["optional-dependencies"]["generator"]}


def test_torch_is_pinned_to_the_machines_build_everywhere():
    for extra, reqs in PROJECT["optional-dependencies"].items():
        for r in reqs:
            if name(r) in ("torch", "torchvision"):
                assert r in ("torch==2.14.1", "torchvision==0.29.1"), f"[{extra}] {r}"


def test_console_scripts_point_at_real_callables():
    scripts = PROJECT["scripts"]
    assert set(scripts) == {"gmem", "gmem-bank", "gmem-generator", "gmem-train"}
    for script, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), f"{script} -> {target}"


def test_every_package_dir_is_in_the_wheel():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for top in ("gmem", "services", "shared", "training"):
        assert f"{top}*" in include
    for init in ROOT.glob("*/__init__.py"):
        top = init.parent.name
        assert f"{top}*" in include or top in ("tests", "bench", "scripts"), f"{top}/ is not packaged"


# ---------------------------------------------------------------- Dockerfiles and compose


def shared_prefix(path: Path) -> str:
    text = path.read_text()
    start = text.index("# ---- shared prefix")
    return text[start : text.index("# ---- end of shared prefix")]


def test_dockerfiles_share_one_prefix_so_the_torch_layer_is_built_once():
    files = sorted(DEPLOY.glob("Dockerfile.*"))
    assert len(files) == 4
    prefixes = {shared_prefix(p) for p in files}
    assert len(prefixes) == 1, "the shared prefix differs between Dockerfiles"
    for p in files:
        lines = p.read_text().splitlines()
        assert any(re.fullmatch(r"ARG BASE_IMAGE=\S+", line) for line in lines), (
            f"{p.name}: no BASE_IMAGE arg"
        )
        assert "FROM ${BASE_IMAGE}" in lines, p.name


def test_public_bases_are_pinned_images_a_user_can_pull():
    bases = {
        p.name: re.search(r"^ARG BASE_IMAGE=(\S+)$", p.read_text(), re.M).group(1)
        for p in DEPLOY.glob("Dockerfile.*")
    }
    assert bases["Dockerfile.bank"] == bases["Dockerfile.generator-cpu"] == "python:3.11-slim"
    assert (
        bases["Dockerfile.generator"].startswith("nvidia/cuda:")
        and bases["Dockerfile.train"] == bases["Dockerfile.generator"]
    )
    assert all(":" in b and not b.endswith(":latest") for b in bases.values())


def compose_files() -> tuple[dict, dict]:
    return (
        yaml.safe_load((ROOT / "docker-compose.yml").read_text()),
        yaml.safe_load((DEPLOY / "compose.hostnet.yml").read_text()),
    )


def test_hostnet_override_puts_every_service_on_loopback_of_the_host_network():
    main, hostnet = compose_files()
    assert set(hostnet["services"]) == set(main["services"])
    for svc, spec in hostnet["services"].items():
        assert spec["network_mode"] == "host", svc
        for key, value in spec.get("environment", {}).items():
            if key.endswith("_HOST"):
                assert value == "127.0.0.1", f"{svc}: {key}={value}"
            if key.endswith("_URL"):
                assert "127.0.0.1" in value, f"{svc}: {key}={value}"
    assert hostnet["services"]["generator"]["environment"]["GMEM_BANK_URL"] == "http://127.0.0.1:8001"
    assert "--bind" in hostnet["services"]["redis"]["command"]
    # The production file keeps its own network: no service there is on the host network.
    assert all("network_mode" not in spec for spec in main["services"].values())


def test_compose_images_are_the_ones_the_script_builds():
    main, _ = compose_files()
    gpu = yaml.safe_load((DEPLOY / "compose.gpu.yml").read_text())
    script = (ROOT / "scripts" / "containers.sh").read_text()
    for spec in (main["services"]["bank"], main["services"]["generator"], gpu["services"]["generator"]):
        tag = spec["image"].replace("${IMAGE_TAG:-0.1.0}", "$TAG")
        assert tag in script, f"{spec['image']} is not built by scripts/containers.sh"
    assert PROJECT["version"] == "0.1.0", "update the ${IMAGE_TAG:-...} defaults in the compose files"


def test_makefile_has_the_contract_targets():
    make = (ROOT / "Makefile").read_text()
    for target in ("compose-up:", "compose-down:", "images:", "test-containers:"):
        assert re.search(rf"^{target}", make, re.M), target
    assert "export HOSTNET" in make and "$(ARGS)" in make
