"""Generic building blocks: adaLN modulate, batch-invariant RowLinear, timestep embedding, 2-D axial RoPE."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.model_fixtures import one_torch_thread  # noqa: F401
from training.network.layers import AxialRoPE, RowLinear, TimestepEmbedder, modulate


def test_modulate_is_x_times_one_plus_scale_plus_shift():
    x, shift, scale = torch.randn(2, 3, 4), torch.randn(2, 4), torch.randn(2, 4)
    assert torch.allclose(modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None])


def test_row_linear_gives_each_row_the_same_bits_whatever_the_batch_size():
    torch.manual_seed(0)
    lin = RowLinear(64, 48).eval()
    x = torch.randn(7, 64)
    batch = lin(x)
    assert torch.equal(batch, torch.cat([lin(x[i : i + 1]) for i in range(7)]))
    assert torch.allclose(batch, torch.nn.functional.linear(x, lin.weight, lin.bias), atol=1e-5)


def test_timestep_embedding_is_cos_first_on_raw_time():
    emb = TimestepEmbedder.frequency_embedding(torch.tensor([0.0, 0.5]))
    assert torch.all(emb[0, :128] == 1) and torch.all(emb[0, 128:] == 0)
    assert math.isclose(float(emb[1, 0]), math.cos(0.5), rel_tol=1e-6)  # w_0 = 1: no x1000 scaling
    assert math.isclose(float(emb[1, 128]), math.sin(0.5), rel_tol=1e-6)


def test_rope_rows_rotate_first_half_and_columns_second_half():
    rope = AxialRoPE(head_dim=8, grid=4)
    cos = rope.freqs_cos
    # tokens 0 and 1 share the row h = 0: the first hd/2 channels (row part) do not rotate
    assert torch.equal(cos[0, :4], cos[1, :4]) and not torch.equal(cos[0, 4:], cos[1, 4:])
    # tokens 0 and 4 share the column w = 0
    assert torch.equal(cos[0, 4:], cos[4, 4:]) and not torch.equal(cos[0, :4], cos[4, :4])
    # adjacent channel pairs share a frequency (interleaved layout)
    assert torch.equal(cos[:, 0::2], cos[:, 1::2])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1), st.integers(0, 1))
def test_rope_scores_depend_only_on_relative_position(h1, w1, dh, dw):
    rope = AxialRoPE(head_dim=16, grid=4)
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)
    x = torch.stack([q] * 16)[None, None]
    y = torch.stack([k] * 16)[None, None]
    rq, rk = rope(x)[0, 0], rope(y)[0, 0]
    n = lambda h, w: h * 4 + w  # noqa: E731
    a = rq[n(h1, w1)] @ rk[n(h1 + dh, w1 + dw)]
    b = rq[n(h1 + 1, w1 + 1)] @ rk[n(h1 + 1 + dh, w1 + 1 + dw)]
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(rq.norm(dim=-1), q.norm().expand(16), atol=1e-4)  # a rotation
