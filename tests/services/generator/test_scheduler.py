"""The step scheduler in process, on the embedded model: joins at exact steps, policies, cancel, failures."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from services.generator.jobs.executor import StepExecutor
from services.generator.jobs.scheduler import Cancelled, StepScheduler, Work
from services.generator.runtime import Runtime, read_model_facts
from services.generator.settings import GeneratorSettings
from tests.support.services import DEFAULT_MODEL
from training.flow.generate import generate, to_png


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    torch.set_num_threads(1)
    rt = Runtime(
        GeneratorSettings(model=str(DEFAULT_MODEL), torch_threads=1, max_batch_size=8),
        read_model_facts(DEFAULT_MODEL),
    )
    rt.load()
    return rt


def _snippets(n: int, seed: int) -> np.ndarray:
    s = np.random.default_rng(seed).standard_normal((n, 128)).astype(np.float32)
    return s / np.linalg.norm(s, axis=1, keepdims=True)


class Job:
    def __init__(
        self,
        sched: StepScheduler,
        name: str,
        n: int,
        seed: int,
        steps: int,
        sampler: str,
        cfg: float = 1.0,
        **kw,
    ) -> None:
        self.done = threading.Event()
        self.pngs: list[bytes] | None = None
        self.error: BaseException | None = None
        self.steps_seen: list[int] = []
        self.on_step = kw.pop("on_step", None)
        self.args = (_snippets(n, seed), [seed + k for k in range(n)], steps, sampler, cfg)
        self.work = Work(
            id=name,
            snippets=self.args[0],
            seeds=self.args[1],
            steps=steps,
            sampler=sampler,
            cfg_scale=cfg,
            on_progress=self._progress,
            on_done=self._done,
            **kw,
        )
        self.sched = sched

    def _progress(self, step: int, steps: int, preview: bytes | None) -> None:
        self.steps_seen.append(step)
        if self.on_step is not None:
            self.on_step(step)

    def _done(self, pngs, err, saved) -> None:
        self.pngs, self.error = pngs, err
        self.done.set()

    def submit(self) -> Job:
        self.sched.submit(self.work)
        return self

    def alone(self, runtime: Runtime) -> list[bytes]:
        sn, seeds, steps, sampler, cfg = self.args
        return [to_png(im) for im in generate(runtime.model, sn, seeds, steps, sampler, cfg)]


@pytest.mark.parametrize("join_at", [1, 6, 11])
def test_a_job_joining_at_any_step_gets_the_bytes_it_gets_alone(runtime: Runtime, join_at: int):
    sched = StepScheduler(StepExecutor(runtime), 8)
    sched.start()
    try:
        late = Job(sched, "late", 2, 40, 9, "sde", 2.0)
        first = Job(
            sched, "first", 3, 11, 12, "heun", on_step=lambda s: late.submit() if s == join_at else None
        )
        first.submit()
        assert first.done.wait(120) and late.done.wait(120)
        assert first.error is None and late.error is None
        assert first.steps_seen == list(range(1, 13))
        assert first.pngs == first.alone(runtime) and late.pngs == late.alone(runtime)
        assert sched.forwards < 2 * 12 + 9 * 1  # they shared forwards
    finally:
        sched.stop()


def test_policies_give_the_same_bytes_and_step_needs_the_fewest_forwards(runtime: Runtime):
    forwards, outputs = {}, {}
    for policy in ("none", "request", "step"):
        sched = StepScheduler(StepExecutor(runtime), 8, policy=policy)  # type: ignore[arg-type]
        jobs = [Job(sched, f"j{i}", 1, 100 + i, steps, "euler") for i, steps in enumerate((4, 8, 4, 6))]
        for j in jobs:
            j.submit()
        sched.start()
        try:
            assert all(j.done.wait(120) for j in jobs)
        finally:
            sched.stop()
        forwards[policy], outputs[policy] = sched.forwards, [j.pngs for j in jobs]
    assert outputs["none"] == outputs["request"] == outputs["step"]
    assert forwards["none"] == 22 and forwards["step"] == 8 and forwards["none"] > forwards["request"] > 8


def test_cancel_ends_only_that_job_and_a_failing_job_fails_alone(runtime: Runtime):
    sched = StepScheduler(StepExecutor(runtime), 8)
    sched.start()
    try:
        keep = Job(sched, "keep", 1, 5, 20, "euler")
        doomed = Job(
            sched,
            "doomed",
            1,
            6,
            200,
            "euler",
            on_step=lambda s: sched.cancel(doomed.work) if s == 3 else None,
        )
        bad = Job(sched, "bad", 1, 7, 5, "nonsense")  # unknown sampler: fails when it starts
        for j in (keep, doomed, bad):
            j.submit()
        assert all(j.done.wait(120) for j in (keep, doomed, bad))
        assert isinstance(doomed.error, Cancelled) and max(doomed.steps_seen) <= 4
        assert isinstance(bad.error, ValueError) and bad.pngs is None
        assert keep.error is None and keep.pngs == keep.alone(runtime)
    finally:
        sched.stop()
