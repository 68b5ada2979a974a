"""The demo's path end to end through real processes, and the `python -m gmem` CLI against it.

One `python -m scripts.demo --keep-running` run (redis-server, the bank with the
embedded encoder, the generator) is shared by the module: its outputs are checked
step by step, the CLI is driven against the live stack, and the last test presses
Ctrl-C and restarts the bank on the demo's data dir to check the edits survived.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from gmem.stack import ARTIFACTS, LocalStack, StackConfig
from shared.client import BankClient, GeneratorClient

ROOT = Path(__file__).resolve().parents[2]
N, STEPS, POINTS = 4, 6, 3
START_TIMEOUT_S = 300


@dataclass
class Demo:
    proc: subprocess.Popen
    out: Path
    summary: dict
    log: Path

    def bank(self) -> BankClient:
        return BankClient(self.summary["bank_url"], token=self.summary["token"], timeout=60)

    def generator(self) -> GeneratorClient:
        return GeneratorClient(self.summary["generator_url"], timeout=300)

    def cli(self, *args: str, token: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GMEM_")}
        env.update(
            GMEM_BANK_URL=self.summary["bank_url"],
            GMEM_GENERATOR_URL=self.summary["generator_url"],
            COLUMNS="200",
            NO_COLOR="1",
        )
        if token:
            env["GMEM_BANK_TOKEN"] = self.summary["token"]
        return subprocess.run(
            [sys.executable, "-m", "gmem", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it no longer runs.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    out = tmp_path_factory.mktemp("demo-output")
    log = out.parent / f"{out.name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GMEM_")}
    env.update(GMEM_GENERATOR_TORCH_THREADS="2", COLUMNS="200")
    argv = [
        sys.executable,
        "-m",
        "scripts.demo",
        "--out",
        str(out),
        "--n",
        str(N),
        "--steps",
        str(STEPS),
        "--points",
        str(POINTS),
        "--model",
        str(ARTIFACTS / "model.safetensors"),
        "--keep-running",
        "--bank-port",
        "0",
        "--generator-port",
        "0",
        "--redis-port",
        "0",
        "--playground-port",
        "0",
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    summary_path = out / "summary.json"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not summary_path.exists():
            assert proc.poll() is None, f"the demo exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, (
                f"the demo did not finish in {START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}"
            )
            time.sleep(0.5)
        demo = Demo(proc, out, json.loads(summary_path.read_text()), log)
        yield demo
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the demo treats SIGTERM like Ctrl-C
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if summary_path.exists():  # never leave services behind, whatever happened above
            for pid in json.loads(summary_path.read_text()).get("pids", {}).values():
                if _alive(pid):
                    os.killpg(pid, signal.SIGKILL)


def png_array(path_or_bytes: str | bytes | Path) -> np.ndarray:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("L"))


# ---------------------------------------------------------------- the three demo steps


def test_grid_images_decode_and_come_from_base_snippets(demo):
    grid = demo.summary["grid"]
    assert len(grid["images"]) == N and len(grid["indices"]) == N
    base = demo.bank().info().base_size
    assert all(0 <= i < base for i in grid["indices"]), "the noise-CDF index draws from the base pool"
    arrays = [png_array(p) for p in grid["images"]]
    assert {a.shape for a in arrays} == {(128, 128)}  # 32x32 saved at 4x
    assert len({a.tobytes() for a in arrays}) == N, "different seeds must give different images"
    assert png_array(grid["grid"]).shape == (2 + 2 * 130, 2 + 2 * 130)  # 2x2 cells, 2 px padding
    assert grid["steps"] == STEPS


def test_inserted_style_gets_an_id_and_steers_generation(demo):
    style = demo.summary["style"]
    bank, gen = demo.bank(), demo.generator()
    base = bank.info().base_size
    assert style["id"] >= base and style["version"] >= 1
    snip = bank.get_snippet(style["id"])
    assert snip.kind == "inserted"
    assert abs(float(np.linalg.norm(snip.snippet)) - 1) < 1e-4
    assert style["indices"] == [style["id"]] * len(style["images"])
    for p in style["images"]:
        png_array(p)
    # Same noise, different snippet: the image changes; same snippet: the same bytes.
    other = demo.summary["interpolation"]["j"]
    a = gen.generate(n=1, seed=11, steps=STEPS, snippet_ids=[style["id"]]).images[0]
    b = gen.generate(n=1, seed=11, steps=STEPS, snippet_ids=[other]).images[0]
    again = gen.generate(n=1, seed=11, steps=STEPS, snippet_ids=[style["id"]]).images[0]
    assert a == again
    assert np.abs(png_array(a).astype(int) - png_array(b).astype(int)).mean() > 1.0
    # And the images look like the inserted style: read back through the bank's own encoder,
    # their nearest base snippets carry the source digit's label.
    source = nearest_labels(bank, Path(style["source_image"]).read_bytes(), base)
    want = max(set(source), key=source.count)
    drawn = gen.generate(n=4, seed=21, steps=STEPS, snippet_ids=[style["id"]]).images
    got = [lab for png in drawn for lab in nearest_labels(bank, png, base)]
    assert got.count(want) > len(got) / 2, f"images from a {want} snippet look like {got}"


def nearest_labels(bank: BankClient, png: bytes, base: int, k: int = 5) -> list[int]:
    """Labels of the k nearest base snippets of an image (projected by the bank's encoder)."""
    hits = bank.search(snippet=bank.project(image=png).snippet, k=k + 8)
    return [bank.get_snippet(h.id).label for h in hits if h.id < base][:k]


def test_interpolated_snippets_get_ids_and_move_the_image_from_j_to_i(demo):
    it = demo.summary["interpolation"]
    bank, gen = demo.bank(), demo.generator()
    assert it["alphas"] == [0.0, 0.5, 1.0]
    assert len(set(it["ids"])) == POINTS and min(it["ids"]) > demo.summary["style"]["id"]
    for sid, alpha in zip(it["ids"], it["alphas"], strict=True):
        s = bank.get_snippet(sid)
        assert (
            s.kind == "interpolated" and s.parents == [it["i"], it["j"]] and s.alpha == pytest.approx(alpha)
        )
    assert (it["label_j"], it["label_i"]) == (3, 8)  # the strip runs from a 3 (alpha 0) to an 8
    strip = png_array(it["grid"])
    assert strip.shape == (2 + 130, 2 + POINTS * 130)
    # The strip used one seed for every alpha; alpha=1 is snippet i, alpha=0 snippet j.
    seed = it["seed"]
    ends = {
        name: png_array(gen.generate(n=1, seed=seed, steps=STEPS, snippet_ids=[sid]).images[0]).astype(int)
        for name, sid in (("i", it["i"]), ("j", it["j"]))
    }
    at = [png_array(p)[::4, ::4].astype(int) for p in it["images"]]  # undo the 4x upscaling

    def dist(x, y):
        return float(np.abs(x - y).mean())

    assert dist(ends["i"], ends["j"]) > 5.0, "snippets i and j must steer the same noise to different images"
    assert dist(at[-1], ends["i"]) < dist(at[-1], ends["j"])
    assert dist(at[0], ends["j"]) < dist(at[0], ends["i"])
    assert dist(at[-1], ends["i"]) < 1.0 and dist(at[0], ends["j"]) < 1.0


def test_every_bank_edit_reached_the_redis_stream(demo):
    import redis

    r = redis.Redis.from_url(demo.summary["redis_url"])
    version = demo.bank().info().version
    events = r.xrange("gmem:bank:events")
    assert len(events) == version >= 1 + POINTS
    last = {k.decode(): v.decode() for k, v in events[-1][1].items()}
    assert int(last["version"]) == version


def test_demo_printed_where_the_images_are_and_curl_examples(demo):
    text = demo.log.read_text()
    assert "curl -s -X POST" in text and "/generate" in text and "/bank/interpolate" in text
    assert str(demo.out) in text.replace("\n", "")


# ---------------------------------------------------------------- the CLI against the live stack


def test_cli_generate_writes_the_generators_images(demo, tmp_path):
    r = demo.cli(
        "--json", "generate", "-n", "2", "--seed", "5", "--steps", str(STEPS), "--out", str(tmp_path)
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["seed"] == 5 and len(data["images"]) == 2
    direct = demo.generator().generate(n=2, seed=5, steps=STEPS)
    for path, png in zip(data["images"], direct.images, strict=True):
        assert np.array_equal(png_array(path), png_array(png)), (
            "the CLI must save exactly what the service drew"
        )
    assert Path(data["grid"]).is_file()


def test_cli_insert_search_interpolate_info(demo, tmp_path):
    image = demo.out / "input-digit-8.png"
    r = demo.cli(
        "--json",
        "insert",
        "--image",
        str(image),
        "--name",
        "cli-8",
        "--preview",
        "2",
        "--steps",
        str(STEPS),
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert len(created["images"]) == 2 and all(Path(p).is_file() for p in created["images"])
    snip = demo.bank().get_snippet(created["id"])
    assert snip.kind == "inserted" and snip.name == "cli-8"

    r = demo.cli("--json", "search", "--id", str(created["id"]), "--k", "3")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)["neighbors"]
    assert hits[0]["id"] == created["id"] and hits[0]["distance"] == pytest.approx(0, abs=1e-4)
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)

    before = demo.bank().info().version
    r = demo.cli(
        "--json",
        "interpolate",
        str(created["id"]),
        "0",
        "--alpha",
        "0.25",
        "--alpha",
        "0.75",
        "--steps",
        str(STEPS),
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    inter = json.loads(r.stdout)
    assert len(inter["ids"]) == 2 and inter["version"] == before + 2
    assert png_array(inter["grid"]).shape[1] > png_array(inter["grid"]).shape[0]  # a horizontal strip

    r = demo.cli("--json", "info")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (
        info["bank"]["version"] == before + 2 and info["bank"]["feature_dim"] == info["model"]["feature_dim"]
    )


def test_cli_errors_are_one_clear_line_not_a_traceback(demo):
    r = demo.cli("insert", "--image", str(demo.out / "input-digit-3.png"), token=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "401" in r.stderr and "GMEM_BANK_TOKEN" in r.stderr
    r = demo.cli("search", "--id", "999999999")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "404" in r.stderr


def test_keep_running_serves_the_playground(demo):
    url = demo.summary["playground_url"]
    page = httpx.get(url + "/", timeout=10)
    assert page.status_code == 200 and 'id="gallery"' in page.text and 'id="strip"' in page.text
    status = httpx.get(url + "/api/status", timeout=30).json()
    assert status["bank"]["ok"] and status["generator"]["ok"] and status["playground"]["token_configured"]
    assert status["bank"]["version"] == demo.bank().info().version


# ---------------------------------------------------------------- Ctrl-C, then a restart keeps the edits


def test_ctrl_c_stops_the_stack_and_the_bank_restarts_with_its_edits(demo, tmp_path):
    bank = demo.bank()
    info = bank.info()
    edits = {
        sid: bank.get_snippet(sid)
        for sid in [demo.summary["style"]["id"], *demo.summary["interpolation"]["ids"]]
    }
    pids = demo.summary["pids"]

    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(timeout=60) == 0, demo.log.read_text()[-3000:]
    for name, pid in pids.items():
        assert not _alive(pid), f"{name} (pid {pid}) still runs after Ctrl-C"

    cfg = StackConfig(out_dir=demo.out, bank_port=None, generator_port=None, redis_port=None, use_redis=False)
    stack = LocalStack(cfg)
    try:
        stack.start(generator=False)
        with BankClient(stack.bank_url) as again:
            after = again.info()
            assert (after.version, after.size) == (info.version, info.size)
            for sid, before in edits.items():
                s = again.get_snippet(sid)
                assert (s.kind, s.parents, s.alpha) == (before.kind, before.parents, before.alpha)
                assert np.allclose(s.snippet, before.snippet, atol=1e-6)
        # An acknowledged edit also survives kill -9 of the bank.
        with BankClient(stack.bank_url, token=cfg.token) as again:
            created = again.insert_image(demo.out / "input-digit-3.png", name="before the crash")
        stack.restart_bank(hard=True)
        with BankClient(stack.bank_url) as again:
            assert again.info().version == created.version
            assert again.get_snippet(created.id).name == "before the crash"
    finally:
        stack.stop()
