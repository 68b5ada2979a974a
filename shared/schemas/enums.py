"""Names the services, the client and the training code must spell the same way (CONTRACT.md 4, 6)."""

from __future__ import annotations

from enum import StrEnum


class Pool(StrEnum):
    """Which snippets a retrieval or search draws from: base rows, live run-time snippets, or both."""

    BASE = "base"
    USER = "user"
    ALL = "all"


class Sampler(StrEnum):
    """Samplers of the flow (paper section 4.3 samples with SiT's ODE/SDE solvers)."""

    SDE = "sde"
    EULER = "euler"
    HEUN = "heun"


SAMPLERS: tuple[str, ...] = tuple(s.value for s in Sampler)
