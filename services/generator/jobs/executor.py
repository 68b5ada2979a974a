"""The tensor side of the step scheduler: start a job, run one shared forward, finish, preview.

One forward carries, for every running job, its rows at its own ``t``: the
conditional rows, then (while guidance applies at that ``t``) the unconditional
rows with the job's null snippet. Rows go through the network in chunks of at most
the probed size; when the runtime pads (batch-dependent kernels, see runtime.py)
every chunk is padded to exactly ``micro_batch`` rows. Each job then gets its own
slices back, combines CFG as ``training.flow.samplers.combine_cfg`` and advances its state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from services.generator.jobs.scheduler import Work
from training.flow.generate import decode, image_shape, noise_generator, to_png, to_uint8
from training.flow.samplers import SamplerOptions, SamplerState, cfg_active, combine_cfg


class StepExecutor:
    """Wraps a loaded ``Runtime``: the scheduler's begin / step / finish / preview."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    @property
    def _model(self) -> Any:
        return self.runtime.model

    def _device(self) -> torch.device:
        device: torch.device = next(self._model.net.parameters()).device
        return device

    def begin(self, work: Work) -> None:
        cfg = self._model.config
        device = self._device()
        generators = [noise_generator(s) for s in work.seeds]
        x = torch.stack([torch.randn(image_shape(cfg), generator=g, dtype=torch.float32) for g in generators])
        opts = SamplerOptions(
            cfg.sampling.time_shift,
            cfg.sampling.diffusion_norm,
            cfg.sampling.sde_solver,
            cfg.sampling.last_step_size,
        )
        with torch.inference_mode():
            work.state = SamplerState(work.sampler, x.to(device), work.steps, generators, opts)
        if cfg.conditioning == "snippet":
            work.cond = torch.from_numpy(np.ascontiguousarray(work.snippets, dtype=np.float32)).to(device)
            work.null = (
                torch.zeros_like(work.cond)
                if work.negative is None
                else torch.from_numpy(np.ascontiguousarray(work.negative, dtype=np.float32)).to(device)
            )

    def _guided(self, work: Work, t: float) -> bool:
        cfg = self._model.config
        if cfg.conditioning != "snippet":
            return False
        return cfg_active(t, work.cfg_scale, cfg.sampling.cfg_interval_start, work.interval)

    def step(self, batch: list[Work]) -> int:
        """One forward over every job's next evaluation; returns the rows computed (padding excluded)."""
        xs, ts, cs, plan = [], [], [], []
        for work in batch:
            x, t = work.state.pending
            guided = self._guided(work, t)
            if not guided and work.cfg_scale != 1.0 and self._model.config.conditioning == "snippet":
                work.saved += work.n  # the unconditional pass skipped outside the guidance interval
            reps = 2 if guided else 1
            tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
            xs.extend([x] * reps)
            ts.extend([tt] * reps)
            if work.cond is not None:
                cs.extend([work.cond, work.null] if guided else [work.cond])
            plan.append((work, guided, x.shape[0]))
        x_all, t_all = torch.cat(xs), torch.cat(ts)
        c_all = torch.cat(cs) if cs else None
        with torch.inference_mode(), self.runtime._autocast():
            out = self._forward(x_all, t_all, c_all)
            at = 0
            for work, guided, n in plan:
                if guided:
                    v = combine_cfg(out[at : at + n], out[at + n : at + 2 * n], work.cfg_scale)
                    at += 2 * n
                else:
                    v = out[at : at + n]
                    at += n
                work.state.advance(v)
        return int(x_all.shape[0])

    def _forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        net = self._model.net
        micro = self.runtime.micro_batch
        chunk = micro or max(1, 2 * self.runtime.settings.max_batch_size)
        total = x.shape[0]
        if not micro and total <= chunk:
            out: torch.Tensor = net(x, t, c)
            return out
        outs = []
        for start in range(0, total, chunk):
            xs, ts = x[start : start + chunk], t[start : start + chunk]
            cs = None if c is None else c[start : start + chunk]
            real = xs.shape[0]
            if micro and real < micro:
                pad = micro - real
                xs = torch.cat([xs, xs[-1:].expand(pad, *xs.shape[1:])])
                ts = torch.cat([ts, ts[-1:].expand(pad)])
                cs = None if cs is None else torch.cat([cs, cs[-1:].expand(pad, *cs.shape[1:])])
            outs.append(net(xs, ts, cs)[:real])
        return torch.cat(outs)

    def _images(self, x: torch.Tensor) -> np.ndarray:
        # One image per decode call: a latent decoder's rows must not depend on the batch either.
        if self._model.config.space == "pixel":
            return to_uint8(decode(self._model, x))
        return np.concatenate([to_uint8(decode(self._model, x[i : i + 1])) for i in range(x.shape[0])])

    def finish(self, work: Work) -> list[bytes]:
        images = self._images(work.state.result)
        return [to_png(images[i]) for i in range(images.shape[0])]

    def preview(self, work: Work) -> bytes | None:
        """PNG strip of the current clean-image prediction of every image of the job."""
        est = work.state.clean_estimate()
        if est is None:
            return None
        est = est[: self.runtime.settings.max_preview_images]
        with torch.inference_mode():
            images = self._images(est)
        return to_png(np.concatenate(list(images), axis=1))
