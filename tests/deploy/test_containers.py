"""The container path for real: offline image builds, the compose stack, and what it must keep.

Builds the images from this tree on the local Debian base with no network in the build, starts the
stack with `make compose-up HOSTNET=1` (every service on 127.0.0.1), and checks it against the same
services run from the venv. It never skips: where dockerd cannot start, it fails and says why. It
removes its containers, volumes and images, and stops a dockerd it started, whether it passes or not.
The tests share one stack and run in file order (edits made in one are checked after restarts).
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from gmem.stack import LocalStack, StackConfig, free_port
from tests.deploy.containers import (
    BANK_URL,
    GENERATOR_URL,
    IMAGES,
    LOCAL_BASE,
    PLAYGROUND_URL,
    ROOT,
    SERVICES,
    CommandFailed,
    Env,
    report_lines,
    run,
    wait_ready,
)

# The first test pays for the engine, the base image, the wheelhouse and the builds (about 17 minutes
# on a fresh 2-core machine); the suite-wide 600 s per test is too short for that.
pytestmark = pytest.mark.timeout(3600)

ENV_FILE = ROOT / "deploy" / "bank.env"
GENERATE = {"n": 2, "seed": 11, "steps": 4}
TORCH_DISTS = ("torch", "torchvision", "timm", "triton")


@pytest.fixture(scope="module")
def env(request, tmp_path_factory) -> Env:
    e = Env(
        tag=f"test{os.getpid()}",
        project=f"gmemtest{os.getpid()}",
        redis_port=free_port(),
        state_dir=tmp_path_factory.mktemp("dockerd"),
    )
    started = time.monotonic()
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def finish() -> None:
        e.figures["test_wall_s"] = round(time.monotonic() - started, 1)
        if (e.state_dir / "dockerd.started").exists():
            e.script("engine-stop", timeout=120)
        # Past pytest's capture, so the figures show in CI's log even when everything passes.
        with capture.global_and_fixture_disabled():
            for line in report_lines(e.figures):
                (reporter.write_line if reporter else print)(line)

    request.addfinalizer(finish)
    t0 = time.monotonic()
    try:
        e.script("engine", timeout=300)
    except CommandFailed as exc:
        pytest.fail(f"the Docker engine cannot start here, so the container path is untested:\n{exc}")
    e.figures["engine_s"] = round(time.monotonic() - t0, 1)
    e.figures["dockerd_started_by_test"] = (e.state_dir / "dockerd.started").exists()
    e.figures["dockerd_version"] = e.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    return e


@pytest.fixture(scope="module")
def images(env: Env, request) -> dict[str, str]:
    had_base = env.docker("image", "inspect", LOCAL_BASE, check=False).returncode == 0

    def remove() -> None:
        tags = [env.image(n) for n in IMAGES]
        env.docker("rmi", "-f", *tags, check=False)
        if not had_base:
            env.docker("rmi", "-f", LOCAL_BASE, check=False)
        if env.figures.get("dockerd_started_by_test"):
            # Nobody else uses this engine: its build cache goes too.
            env.docker("builder", "prune", "-af", check=False, timeout=300)

    request.addfinalizer(remove)
    times: dict[str, float] = {}
    t0 = time.monotonic()
    env.script("base", timeout=600)
    times["base"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    env.script("wheelhouse", timeout=900)
    times["wheelhouse"] = round(time.monotonic() - t0, 1)
    for name in IMAGES:
        t0 = time.monotonic()
        env.script("images", name, timeout=1500)
        times[name] = round(time.monotonic() - t0, 1)
    sizes = {name: round(int(env.inspect(env.image(name), "{{.Size}}")) / 1e6) for name in IMAGES}
    env.figures["build_s"] = times
    env.figures["image_mb"] = sizes
    env.figures["base_mb"] = round(int(env.inspect(LOCAL_BASE, "{{.Size}}")) / 1e6)
    return {name: env.image(name) for name in IMAGES}


@pytest.fixture(scope="module")
def stack(env: Env, images: dict[str, str], request) -> dict[str, str]:
    made_env_file = not ENV_FILE.exists()

    def down() -> None:
        try:
            out = run(["make", "-o", "setup", "compose-down", "ARGS=-v"], env.vars, 300, check=False)
            env.figures["compose_down_rc"] = out.returncode
        finally:
            left = env.cleanup_project()
            env.figures["left_after_down"] = len(left)
            if made_env_file:
                ENV_FILE.unlink(missing_ok=True)

    request.addfinalizer(down)
    t0 = time.monotonic()
    out = run(["make", "-o", "setup", "compose-up"], env.vars, 900)
    env.figures["compose_up_s"] = round(time.monotonic() - t0, 1)
    for line in (f"bank:       {BANK_URL}", f"generator:  {GENERATOR_URL}", f"playground: {PLAYGROUND_URL}"):
        assert line in out.stdout, out.stdout
    text = ENV_FILE.read_text()
    token = re.search(r"^GMEM_BANK_TOKEN=(\S+)$", text, re.M)
    assert token and len(token.group(1)) >= 32, "deploy/bank.env needs a GMEM_BANK_TOKEN of 32+ characters"
    if made_env_file:
        assert "created deploy/bank.env" in out.stderr, "compose-up must say where the new token is"
        assert (ENV_FILE.stat().st_mode & 0o077) == 0, "the token file must be private to its owner"
    return {"token": token.group(1)}


# ---------------------------------------------------------------- images


def test_images_are_offline_non_root_and_the_plain_bank_has_no_torch(env, images):
    for name, tag in images.items():
        assert env.inspect(tag, "{{.Config.User}}") == "gmem", f"{name} must run as the gmem user"
        if name in SERVICES:
            assert "/readyz" in env.inspect(tag, "{{json .Config.Healthcheck}}"), (
                f"{name}: no /readyz healthcheck"
            )
    probe = f"import importlib.util as u; print([m for m in {TORCH_DISTS!r} if u.find_spec(m)])"
    plain = env.docker("run", "--rm", "--network", "none", images["bank"], "python", "-c", probe).stdout
    assert plain.strip() == "[]", f"the bank image without an encoder has {plain.strip()}"
    encoder = env.docker(
        "run", "--rm", "--network", "none", images["bank-encoder"], "python", "-c", probe
    ).stdout
    assert "torch" in encoder, "the encoder bank image must carry torch for image inserts"
    # The console scripts are the package's own, installed from the wheelhouse.
    for name, script in (
        ("bank", "gmem-bank"),
        ("generator", "gmem-generator"),
        ("generator-gpu", "gmem"),
        ("train", "gmem-train"),
    ):
        out = env.docker(
            "run", "--rm", "--network", "none", "--entrypoint", script, images[name], "--help"
        ).stdout
        assert "Usage" in out, f"`{script} --help` in {name}: {out[-500:]}"
    # The torch layer is built once: the CPU and GPU generator images share it on the same base.
    cpu = env.inspect(images["generator"], "{{json .RootFS.Layers}}")
    gpu = env.inspect(images["generator-gpu"], "{{json .RootFS.Layers}}")
    shared = os.path.commonprefix([cpu.split(","), gpu.split(",")])
    env.figures["generator_shared_layers"] = len(shared)
    assert len(shared) >= 3, "the CPU and GPU generator images should share base, venv and torch layers"


def test_pip_install_into_fresh_venvs_offline_and_bank_extra_pulls_no_torch(env, images, tmp_path):
    wheels = ROOT / "wheelhouse"
    offline = ["--no-index", "--find-links", str(wheels / "common"), "--find-links", str(wheels / "own")]
    core = tmp_path / "core"
    run([sys.executable, "-m", "venv", str(core)], env.vars, 120)
    # `pip install .` from the source tree: the build backend itself comes from the wheelhouse.
    run([str(core / "bin/pip"), "install", "-q", *offline, str(ROOT)], env.vars, 600)
    for script in ("gmem", "gmem-bank", "gmem-generator", "gmem-train"):
        assert (core / "bin" / script).is_file(), f"`pip install .` must install the {script} console script"
    assert "Usage" in run([str(core / "bin/gmem"), "--help"], env.vars, 60).stdout
    bank = tmp_path / "bank"
    run([sys.executable, "-m", "venv", str(bank)], env.vars, 120)
    # torch is not in wheelhouse/common: this install fails if the bank extra needs it.
    run([str(bank / "bin/pip"), "install", "-q", *offline, "gmem-serving[bank]"], env.vars, 600)
    listed = run([str(bank / "bin/pip"), "list", "--format=freeze"], env.vars, 60).stdout.lower()
    assert not [d for d in TORCH_DISTS if f"\n{d}==" in "\n" + listed], listed
    assert "Usage" in run([str(bank / "bin/gmem-bank"), "--help"], env.vars, 60).stdout


# ---------------------------------------------------------------- the stack


def _venv_generate(tmp_path: Path) -> dict:
    cfg = StackConfig(
        out_dir=tmp_path / "venv-stack",
        bank_port=free_port(),
        generator_port=free_port(),
        redis_port=None,
        use_redis=False,
        encoder=None,
        encoder_weights=None,
    )
    with LocalStack(cfg) as local:
        r = httpx.post(local.generator_url + "/generate", json=GENERATE, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()


def test_generate_through_containers_matches_the_venv_services(env, stack, tmp_path):
    for svc in ("bank", "generator"):
        cid = env.container(svc)
        assert env.docker("exec", cid, "id", "-u").stdout.strip() == "10001", f"{svc} runs as root"
        deadline = time.monotonic() + 90
        while env.inspect(cid, "{{.State.Health.Status}}") != "healthy":
            assert time.monotonic() < deadline, f"{svc} never reported healthy"
            time.sleep(1)
    logs = env.docker("logs", env.container("bank"))
    assert "bank ready to serve" in logs.stdout + logs.stderr, "the bank must log to stdout/stderr"
    boxed = httpx.post(GENERATOR_URL + "/generate", json=GENERATE, timeout=300)
    assert boxed.status_code == 200, boxed.text
    local = _venv_generate(tmp_path)
    got = boxed.json()
    assert got["bank_version"] == local["bank_version"] == 0
    assert got["indices"] == local["indices"]
    assert got["images"] == local["images"], "containers and venv must give the same PNG bytes"
    env.figures["png_bytes_compared"] = sum(len(x) for x in got["images"])


def test_playground_container_serves_the_page_over_both_services(env, stack):
    cid = env.container("playground")
    assert env.docker("exec", cid, "id", "-u").stdout.strip() == "10001", "playground runs as root"
    page = httpx.get(PLAYGROUND_URL + "/", timeout=30)
    assert page.status_code == 200 and 'id="gallery"' in page.text and 'id="upload"' in page.text
    status = httpx.get(PLAYGROUND_URL + "/api/status", timeout=60).json()
    assert status["bank"]["ok"] and status["generator"]["ok"], status
    assert status["playground"]["token_configured"], (
        "the playground must hold the bank token from deploy/bank.env"
    )


def _digit_png() -> bytes:
    im = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(im).line([(14, 4), (14, 24)], fill=255, width=3)  # a "1"
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _state(ids: list[int]) -> dict:
    info = httpx.get(BANK_URL + "/bank", timeout=10).json()
    rows = {i: httpx.get(f"{BANK_URL}/bank/snippets/{i}", timeout=10).json() for i in ids}
    return {"version": info["version"], "size": info["size"], "rows": rows}


def test_insert_and_interpolate_survive_restart_and_kill(env, stack):
    auth = {"Authorization": f"Bearer {stack['token']}"}
    ins = httpx.post(
        BANK_URL + "/bank/snippets",
        files={"image": ("one.png", _digit_png(), "image/png")},
        data={"name": "one"},
        headers=auth,
        timeout=60,
    )
    assert ins.status_code == 201, ins.text
    mix = httpx.post(
        BANK_URL + "/bank/interpolate",
        json={"i": 0, "j": ins.json()["id"], "alpha": 0.5},
        headers=auth,
        timeout=60,
    )
    assert mix.status_code == 201, mix.text
    ids = [ins.json()["id"], mix.json()["id"]]
    before = _state(ids)
    assert before["version"] == mix.json()["version"] == ins.json()["version"] + 1
    assert [before["rows"][i]["kind"] for i in ids] == ["inserted", "interpolated"]

    env.compose("restart", "bank")
    wait_ready(BANK_URL)
    assert _state(ids) == before, "edits lost across `docker-compose restart bank`"

    env.docker("kill", "-s", "KILL", env.container("bank"))
    env.compose("up", "-d")
    wait_ready(BANK_URL)
    assert _state(ids) == before, "edits lost across kill -9 of the bank container"


def test_generator_answers_503_while_the_bank_is_stopped_and_recovers(env, stack):
    gen = env.container("generator")
    started = env.inspect(gen, "{{.State.StartedAt}}")
    wait_ready(GENERATOR_URL)
    env.compose("stop", "bank")
    try:
        r = httpx.post(GENERATOR_URL + "/generate", json={"n": 1, "seed": 3, "steps": 2}, timeout=60)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "bank_unavailable"
        assert int(r.headers["retry-after"]) >= 1
    finally:
        env.compose("start", "bank")
    wait_ready(BANK_URL)
    deadline = time.monotonic() + 90
    while True:
        r = httpx.post(GENERATOR_URL + "/generate", json={"n": 1, "seed": 3, "steps": 2}, timeout=60)
        if r.status_code == 200:
            break
        assert time.monotonic() < deadline, f"generator did not recover: {r.status_code} {r.text[:300]}"
        time.sleep(1)
    assert env.inspect(gen, "{{.State.StartedAt}}") == started, "the generator must recover without a restart"
    assert env.inspect(gen, "{{.RestartCount}}") == "0"
