"""Real processes for the playground's tests: bank + generator (embedded mnist-5k artifacts) and the
playground, all on loopback, started with the project's one launcher (gmem.stack), and a headless chromium
driven by Playwright. Browsers cannot be downloaded here, so the test uses Debian's ``chromium``
(scripts/setup.sh).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from gmem.stack import REPO_ROOT, LocalStack, StackConfig, free_port

TOKEN = "playground-test-token"
# Small limits and one torch thread: the generator shares 2 CPU cores with the rest of the suite.
GENERATOR_ENV = {
    "GMEM_GENERATOR_MAX_N": "8",
    "GMEM_GENERATOR_MAX_STEPS": "40",
    "GMEM_GENERATOR_TORCH_THREADS": "1",
    "GMEM_GENERATOR_BANK_TIMEOUT_S": "2",
}
STEPS = 8  # sampler steps the tests ask for: enough for a digit, quick on CPU


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    cfg = StackConfig(
        out_dir=tmp_path_factory.mktemp("playground-stack"),
        bank_port=None,
        generator_port=None,
        playground_port=None,
        use_redis=False,
        token=TOKEN,
        generator_env=GENERATOR_ENV,
        bank_env={"GMEM_BANK_FAISS_THREADS": "1"},
    )
    with LocalStack(cfg) as running:
        running.start_playground()
        yield running


@dataclass
class Playground:
    """A playground process on its own (e.g. pointed at a bank that is down)."""

    proc: subprocess.Popen
    url: str

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture()
def playground_without_bank(stack: LocalStack, tmp_path: Path) -> Iterator[Playground]:
    """A playground whose bank URL is a loopback port nobody listens on; the generator is the real one."""
    port, dead = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GMEM_")}
    env.update({"GMEM_BANK_TOKEN": TOKEN, "PYTHONPATH": str(REPO_ROOT)})
    log = (tmp_path / "playground.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.playground",
            "--bank-url",
            f"http://127.0.0.1:{dead}",
            "--generator-url",
            stack.generator_url,
            "--port",
            str(port),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    pg = Playground(proc, f"http://127.0.0.1:{port}")
    try:
        for _ in range(200):
            try:
                if httpx.get(pg.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "playground.log").read_text()
            time.sleep(0.1)
        else:
            raise RuntimeError(f"playground did not start: {(tmp_path / 'playground.log').read_text()}")
        yield pg
    finally:
        pg.stop()
        log.close()


# Package scope, not session: Playwright's sync API keeps an event loop running in the main thread
# while it is open, and later tests call asyncio.run() (which refuses to run inside a running loop).
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, (
        "Debian's chromium is required for the browser test: apt-get install -y chromium (scripts/setup.sh)"
    )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@dataclass
class Tab:
    page: Page
    console_errors: list[str]


@pytest.fixture()
def tab(browser: Browser) -> Iterator[Tab]:
    """A fresh page that records console errors and uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(90_000)
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    yield Tab(page, errors)
    context.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: GMEM_PLAYGROUND_SCREENSHOTS (e.g. docs/playground) or a temp dir."""
    where = os.environ.get("GMEM_PLAYGROUND_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
