"""shared.client against the real bank and generator processes: typed results and typed errors."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from shared.bankmath import cdf_index
from shared.client import (
    AsyncBankClient,
    AsyncGeneratorClient,
    BadRequest,
    BankClient,
    Conflict,
    GeneratorClient,
    NotFound,
    RetryPolicy,
    Unauthorized,
    Unavailable,
)
from tests.support.services import TOKEN, free_port


def test_bank_reads(stack):
    with BankClient(stack.bank.url) as bank:
        info = bank.info()
        assert info.feature_dim == 128 and info.base_size > 0 and info.encoder == "gmem/mnist-ssl"
        z = np.random.default_rng(0).normal(size=(3, 64))
        got = bank.retrieve(z=z, pool="base")
        assert got.indices == [cdf_index(row, info.base_size) for row in z]
        assert got.snippets.shape == (3, 128) and got.snippets.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got.snippets, axis=1), 1.0, atol=1e-5)
        as_json = bank.retrieve(indices=got.indices, encoding="json")
        np.testing.assert_allclose(as_json.snippets, got.snippets, atol=1e-6)
        one = bank.get_snippet(got.indices[0])
        assert one.id == got.indices[0] and one.kind == "base"
        np.testing.assert_allclose(one.snippet, got.snippets[0], atol=1e-6)
        near = bank.search(snippet_id=one.id, k=3)
        assert near[0].id == one.id and near[0].distance == pytest.approx(0.0, abs=1e-5) and len(near) == 3
        proj = bank.project(feature=one.snippet)
        # A stored snippet is normalize(C[i] B^T + mu): the normalisation moves it slightly off the subspace.
        assert 0.0 <= proj.residual < 0.05 and proj.coefficients.shape == (info.rank,)
        assert bank.ready()


def test_bank_mutations_need_the_token_and_map_errors(stack):
    feature = np.random.default_rng(1).normal(size=128)
    with BankClient(stack.bank.url, token="wrong") as anon, pytest.raises(Unauthorized) as exc:
        anon.insert_feature(feature)
    assert exc.value.status == 401
    with BankClient(stack.bank.url, token=TOKEN) as bank:
        created = bank.insert_feature(feature, name="client-test")
        assert created.id >= bank.info().base_size and created.residual is not None
        mixed = bank.interpolate(created.id, 0, 0.5, method="slerp", name="mix")
        assert mixed.version == created.version + 1
        bank.delete(mixed.id)
        with pytest.raises(NotFound):
            bank.get_snippet(mixed.id)
        with pytest.raises(Conflict):
            bank.delete(0)
        with pytest.raises(BadRequest) as bad:
            bank.insert_feature([1.0, 2.0])
        assert bad.value.status == 422 and bad.value.code


def test_image_inserts_and_projections_go_through_the_banks_encoder(stack):
    from training.data import load_dataset

    digit = load_dataset("mnist-5k:eval").images[0][:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(digit, mode="L").save(buf, format="PNG")
    # The bank loads its encoder on first use; allow for a busy CI machine.
    with BankClient(stack.bank.url, token=TOKEN, timeout=120) as bank:
        projected = bank.project(image=buf.getvalue())
        created = bank.insert_image(buf.getvalue(), name="client-image")
        stored = bank.get_snippet(created.id)
        assert stored.name == "client-image" and stored.kind == "inserted"
        np.testing.assert_allclose(stored.snippet, projected.snippet, atol=1e-5)
        assert created.residual == pytest.approx(projected.residual, abs=1e-6)
        with pytest.raises(BadRequest):
            bank.insert_image(b"not an image")


def test_unreachable_service_raises_unavailable_after_bounded_retries():
    dead = f"http://127.0.0.1:{free_port()}"
    with BankClient(dead, timeout=1.0, retry=RetryPolicy(attempts=2, base_delay=0.01)) as bank:
        with pytest.raises(Unavailable) as exc:
            bank.info()
        assert "unreachable" in exc.value.message
    with pytest.raises(ValueError):
        BankClient(dead).retrieve()


def test_async_bank_client(stack):
    async def go():
        async with AsyncBankClient(stack.bank.url) as bank:
            info = await bank.info()
            got = await bank.retrieve(indices=[0, 1])
            with pytest.raises(NotFound):
                await bank.get_snippet(10**9)
            return info, got

    info, got = asyncio.run(go())
    assert got.indices == [0, 1] and got.version == info.version


def test_generator_clients(gen_url: str):
    with GeneratorClient(gen_url) as gen:
        model = gen.model_info()
        out = gen.generate(n=2, seed=21, steps=2, sampler="euler")
        assert out.seed == 21 and len(out.images) == 2 and out.sampler == "euler"
        img = Image.open(io.BytesIO(out.images[0]))
        assert img.size == (model.resolution, model.resolution)
        with pytest.raises(BadRequest):
            gen.generate(n=0)  # refused locally, before the network
        with pytest.raises(NotFound):
            gen.generate(n=1, steps=1, snippet_ids=[10**9])

    async def go():
        async with AsyncGeneratorClient(gen_url) as gen:
            return await gen.generate(n=2, seed=21, steps=2, sampler="euler"), await gen.ready()

    again, ready = asyncio.run(go())
    assert again.images == out.images and ready
