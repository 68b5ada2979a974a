"""Deployment files agree with the code they run: compose, Dockerfiles, requirements, README.

No Docker engine or cluster here, so these parse the files and check them against
what the services really accept: the flags in `python -m services.* --help`, the
GMEM_* variables the settings classes define (k8s: tests/deploy/test_k8s.py).
The bank's torch-free image is checked by running the bank with torch unimportable.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import yaml

from gmem.envvars import all_variables
from gmem.stack import free_port
from tests.support.deploy_helpers import (
    DEPLOY,
    GMEM_VAR,
    ROOT,
    arg_after,
    cli_flags,
    flags_of,
    project_dependencies,
    project_extras,
    requirement_names_of,
    service_module,
    settings_env_names,
)

TORCH_DISTS = {"torch", "torchvision", "timm", "torchaudio"}


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose_gpu() -> dict:
    return yaml.safe_load((DEPLOY / "compose.gpu.yml").read_text())


def test_compose_has_the_four_services_with_healthchecks(compose):
    services = compose["services"]
    override = yaml.safe_load((ROOT / "docker-compose.override.yml").read_text())
    assert set(services) == {"redis", "bank", "generator", "playground"}
    for name in ("bank", "generator", "playground"):
        svc = services[name]
        port = arg_after(svc["command"], "--port")
        probe = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/readyz" in probe, f"{name} healthcheck must hit its own /readyz"
        published = override["services"][name]["ports"]
        assert published == [f"127.0.0.1:{port}:{port}"], f"{name} must publish its --port {port} on loopback"
    assert services["bank"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["generator"]["depends_on"]["bank"]["condition"] == "service_healthy"
    assert arg_after(services["bank"]["command"], "--port") == "8001"
    assert arg_after(services["generator"]["command"], "--port") == "8002"
    assert arg_after(services["playground"]["command"], "--port") == "8003"
    assert services["playground"]["env_file"] == ["deploy/bank.env"], "the playground holds the bank token"


def test_compose_commands_use_only_flags_the_services_accept(compose):
    for name in ("bank", "generator", "playground"):
        argv = compose["services"][name]["command"]
        module = service_module(argv)
        unknown = set(flags_of(argv)) - cli_flags(module)
        assert not unknown, f"compose {name} passes flags {unknown} that `python -m {module}` does not accept"


def test_compose_bank_keeps_its_data_dir_on_a_named_volume(compose):
    bank = compose["services"]["bank"]
    data_dir = arg_after(bank["command"], "--data-dir")
    mounts = dict(v.split(":", 1) for v in bank["volumes"])
    volume = {target: source for source, target in mounts.items()}[data_dir]
    assert volume in compose["volumes"], "the data dir must be a named (top-level) volume, not a bind mount"


def test_compose_generator_finds_the_bank_and_redis_by_service_name(compose):
    services = compose["services"]
    bank_url = urlparse(services["generator"]["environment"]["GMEM_BANK_URL"])
    assert bank_url.hostname == "bank"
    assert str(bank_url.port) == arg_after(services["bank"]["command"], "--port")
    redis_url = urlparse(services["bank"]["environment"]["GMEM_REDIS_URL"])
    assert redis_url.hostname == "redis" and redis_url.port == 6379


def test_compose_bank_token_comes_from_an_env_file_with_an_example(compose):
    env_files = compose["services"]["bank"]["env_file"]
    assert env_files == ["deploy/bank.env"]
    example = (DEPLOY / "bank.env.example").read_text()
    assert re.search(r"^GMEM_BANK_TOKEN=", example, re.M)
    assert "GMEM_BANK_TOKEN" not in str(compose["services"]["bank"].get("environment", {})), (
        "the token must not be written into docker-compose.yml"
    )


def test_compose_gpu_override_uses_the_nvidia_runtime_and_cuda_image(compose, compose_gpu):
    gen = compose_gpu["services"]["generator"]
    devices = gen["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    dockerfile = ROOT / gen["build"]["dockerfile"]
    assert ("ARG", "BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu22.04") in dockerfile_instructions(dockerfile)
    # The CPU default must not ask for a GPU.
    assert "deploy" not in compose["services"]["generator"]


def test_compose_build_files_exist(compose, compose_gpu):
    for doc in (compose, compose_gpu):
        for name, svc in doc["services"].items():
            if "build" in svc:
                assert (ROOT / svc["build"]["dockerfile"]).is_file(), f"{name}: Dockerfile missing"


# ---------------------------------------------------------------- GMEM_* variables


def deploy_texts() -> dict[str, str]:
    files = [ROOT / "docker-compose.yml", *DEPLOY.rglob("*")]
    return {str(p.relative_to(ROOT)): p.read_text() for p in files if p.is_file()}


def test_every_gmem_variable_in_deploy_files_is_a_real_setting():
    known = settings_env_names()
    for path, text in deploy_texts().items():
        unknown = set(GMEM_VAR.findall(text)) - known
        assert not unknown, f"{path} uses {unknown}, which no settings class defines"


def test_readme_lists_every_variable():
    readme = (ROOT / "README.md").read_text()
    missing = sorted({v.name for v in all_variables()} - set(GMEM_VAR.findall(readme)))
    assert not missing, f"README.md does not document {missing} (regenerate with `python -m gmem.envvars`)"


# ---------------------------------------------------------------- Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


@pytest.mark.parametrize(
    "name", ["Dockerfile.bank", "Dockerfile.generator", "Dockerfile.generator-cpu", "Dockerfile.train"]
)
def test_dockerfile_copies_exist_and_cmd_flags_are_accepted(name):
    instructions = dockerfile_instructions(DEPLOY / name)
    for op, rest in instructions:
        if op == "COPY":
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"{name} copies {src}, which is not in the repository"
                assert not _docker_ignored(src), f"{name} copies {src}, which .dockerignore leaves out"
    cmds = [yaml.safe_load(rest) for op, rest in instructions if op == "CMD"]
    for argv in cmds:
        module = service_module(argv)
        assert not set(flags_of(argv)) - cli_flags(module)
    assert not list(DEPLOY.glob("*.dockerignore")), "one .dockerignore at the root, not one per Dockerfile"


def _docker_ignored(path: str) -> bool:
    """Whether the root .dockerignore (a `*` then `!` exceptions) leaves ``path`` out of the context."""
    import fnmatch  # only this helper needs it

    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep, pat = line.startswith("!"), line.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path.rstrip("/"), pat) or path.startswith(pat + "/"):
            ignored = not keep
    return ignored


def test_dockerignore_keeps_the_venv_git_and_tokens_out():
    for path in (".venv/bin/python", ".git/HEAD", "deploy/bank.env", "runs/x", "services/bank/app.py"):
        assert _docker_ignored(path), f"{path} must not reach the build context"
    for path in ("wheelhouse/own/x.whl", "artifacts/mnist-5k/model.safetensors"):
        assert not _docker_ignored(path), path


def test_bank_image_installs_torch_only_with_an_encoder():
    extras = project_extras()
    assert not requirement_names_of(extras["bank"] + project_dependencies()) & TORCH_DISTS
    instructions = dockerfile_instructions(DEPLOY / "Dockerfile.bank")
    assert ("ARG", "WITH_TORCH=false") in instructions
    for op, rest in instructions:
        if op == "RUN" and "torch" in rest:
            assert 'if [ "$WITH_TORCH" = "true" ]' in rest, rest


def test_images_install_only_from_the_wheelhouse():
    for path in DEPLOY.glob("Dockerfile.*"):
        for op, rest in dockerfile_instructions(path):
            if op == "RUN" and "pip install" in rest:
                assert "--no-index" in rest and "/wheels/" in rest, f"{path.name}: {rest}"
            assert not (op == "RUN" and "--index-url" in rest), f"{path.name} reaches for an index"


# -------------------------------------------------- requirements cover the imports


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def module_level_imports(entry: list[str]) -> set[str]:
    """Third-party top-level packages imported at module level, following our own packages."""
    local = {"shared", "services", "training", "gmem", "scripts", "bench"}
    todo, seen, third = list(entry), set(), set()
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or name in seen:
            continue
        seen.add(name)
        # Parents' __init__ run on import too.
        parts = name.split(".")
        todo.extend(".".join(parts[:k]) for k in range(1, len(parts)))
        for node in ast.parse(path.read_text()).body:  # module level only: lazy imports stay lazy
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                top = n.split(".")[0]
                if top in local:
                    todo.append(n)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    third.add(top)
    return third


def with_dependencies(names: set[str]) -> set[str]:
    """Requirement names plus everything they install (fastapi brings starlette, ...)."""
    todo, out = list(names), set()
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        try:
            reqs = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for req in reqs:
            if "extra ==" not in req:
                todo.append(re.split(r"[<>=!~\[; (]", req, maxsplit=1)[0].lower().replace("_", "-"))
    return out


def dists_for(imports: set[str]) -> set[str]:
    mapping = importlib.metadata.packages_distributions()
    return {d.lower().replace("_", "-") for top in imports for d in mapping.get(top, [top])}


def bank_entry_modules() -> list[str]:
    return [f"services.bank.{p.stem}" for p in (ROOT / "services" / "bank").glob("*.py")]


def test_bank_requirements_cover_every_module_level_import_of_the_bank():
    needed = dists_for(module_level_imports(bank_entry_modules()))
    assert not needed & TORCH_DISTS, f"the bank imports {needed & TORCH_DISTS} at module level"
    missing = needed - with_dependencies(
        requirement_names_of(project_dependencies() + project_extras()["bank"])
    )
    assert not missing, f"pyproject.toml's dependencies + [bank] lack {missing}"


def test_generator_requirements_cover_every_module_level_import_of_the_generator():
    entry = [f"services.generator.{p.stem}" for p in (ROOT / "services" / "generator").glob("*.py")]
    needed = dists_for(module_level_imports(entry)) - {"torch", "torchvision"}
    reqs = project_dependencies() + project_extras()["generator"]
    missing = needed - with_dependencies(requirement_names_of(reqs) - {"torch", "torchvision"})
    assert not missing, f"pyproject.toml's dependencies + [generator] lack {missing}"


# ---------------------------------------------------------------- the bank without torch


_NO_TORCH = """
import runpy, sys
for name in ("torch", "torchvision", "timm"):
    sys.modules[name] = None  # any import of these now raises ImportError
sys.argv = ["services.bank", *sys.argv[1:]]
runpy.run_module("services.bank", run_name="__main__", alter_sys=True)
"""


def test_bank_serves_and_edits_with_torch_unimportable(tmp_path):
    from shared.factors import BankMeta, save_factors

    rng = np.random.default_rng(0)
    n, d, r = 64, 16, 4
    M = rng.normal(size=(n, d))
    M /= np.linalg.norm(M, axis=1, keepdims=True)
    mu = M.mean(0)
    U, S, Vt = np.linalg.svd(M - mu, full_matrices=False)
    C, B = U[:, :r] * np.sqrt(S[:r]), Vt[:r].T * np.sqrt(S[:r])
    factors = tmp_path / "bank.safetensors"
    meta = BankMeta(encoder="test/none", feature_dim=d, rank=r, source="random", explained_variance=0.5)
    save_factors(
        factors,
        mu.astype(np.float32),
        B.astype(np.float32),
        S[:r].astype(np.float32),
        C.astype(np.float32),
        meta,
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GMEM_")}
    env["GMEM_BANK_TOKEN"] = "t0ken-long-enough-16"
    log = open(tmp_path / "bank.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _NO_TORCH,
            "--factors",
            str(factors),
            "--data-dir",
            str(tmp_path / "data"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "bank.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "bank not ready within 60 s"
            time.sleep(0.2)
        assert httpx.get(f"{url}/bank").json()["size"] == n
        r1 = httpx.post(
            f"{url}/bank/snippets",
            json={"feature": rng.normal(size=d).tolist()},
            headers={"Authorization": "Bearer t0ken-long-enough-16"},
        )
        assert r1.status_code == 201 and r1.json()["id"] == n
        # An image insert needs an encoder; without one the answer is a clear 4xx, not a crash.
        r2 = httpx.post(
            f"{url}/bank/snippets",
            files={"image": ("x.png", b"\x89PNG", "image/png")},
            headers={"Authorization": "Bearer t0ken-long-enough-16"},
        )
        assert 400 <= r2.status_code < 500 and "error" in r2.json()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
