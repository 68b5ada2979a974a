"""Measures of the T2S path: Wilson intervals, caption retrieval accuracy, RDM-style nearest picks."""

from __future__ import annotations

import math

import numpy as np

from shared.bankmath import cdf_index


def wilson(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion hits/n."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def nearest_rows(queries: np.ndarray, snippets: np.ndarray, k: int = 1) -> np.ndarray:
    """Row indices [Q, k] of the ``k`` bank snippets with the largest cosine to each unit query."""
    sims = np.asarray(queries, dtype=np.float32) @ np.asarray(snippets, dtype=np.float32).T
    order = np.argsort(-sims, axis=1, kind="stable")
    return order[:, :k]


def retrieval_accuracy(
    queries: np.ndarray, query_labels: np.ndarray, snippets: np.ndarray, labels: np.ndarray
) -> tuple[int, int]:
    """(hits, n): how often the nearest bank snippet to g(text) has the caption's label."""
    top = nearest_rows(queries, snippets, 1)[:, 0]
    return int((np.asarray(labels)[top] == np.asarray(query_labels)).sum()), len(query_labels)


def pick_neighbours(neighbour_ids: list[int], noises: list[np.ndarray]) -> list[int]:
    """Image k's snippet among the prompt's nearest neighbours: the noise-CDF index of its noise (paper
    4.3)."""
    return [neighbour_ids[cdf_index(z, len(neighbour_ids))] for z in noises]
