"""Checking a state dict's names and shapes against the ones our module expects."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


def describe(keys: list[str], limit: int = 20) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def state_dict_problems(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, Sequence[int]],
    collapse: Callable[[list[str], Mapping[str, Any]], list[str]] | None = None,
) -> list[str]:
    """Missing, unexpected and misshapen keys, each kind as one phrase naming the keys; [] when all fit.

    ``collapse(keys, universe)`` may shorten the missing/unexpected key lists (e.g. whole blocks).
    """

    def named(keys: list[str], universe: Mapping[str, Any]) -> str:
        return describe(collapse(keys, universe) if collapse else keys)

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {list(state[k].shape)} (ours {list(expected[k])})"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {named(missing, expected)}")
    if unexpected:
        problems.append(f"unexpected keys: {named(unexpected, state)}")
    if wrong:
        problems.append(f"shape mismatches: {describe(wrong, 6)}")
    return problems
