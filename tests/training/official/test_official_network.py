"""Release networks in every container import, and our forward pass equals an independent re-computation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from shared.errors import ArtifactFileError, IncompatibleArtifacts
from tests.training.official import fixtures as fx
from tests.training.official import reference as ref
from tests.training.official.conftest import SMALL_DEPTH, link_decoder
from training.cli import build_app
from training.files.modelfile import load_model, read_model_meta
from training.official.importer import (
    convert_network,
    import_network,
    read_release_file,
    release_config,
    select_network_state,
)

TOL = 1e-5


def _inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, 16, 16, generator=g)
    t = torch.rand(n, generator=g)
    c = torch.nn.functional.normalize(torch.randn(n, 768, generator=g), dim=1)
    return x, t, c


# ----------------------------------------------------------------------------- forward equivalence


def test_small_network_forward_equals_reference_layer_by_layer(small_states):
    sd = small_states[0]
    cfg = release_config("gmem-B/1-lightning", torch.zeros(32), torch.ones(32), depth=SMALL_DEPTH)
    net, ignored, rope_dev = convert_network(sd, cfg)
    assert sorted(ignored) == sorted(k for k in sd if k.startswith("projector."))
    assert rope_dev < 1e-6
    x, t, c = _inputs(2)
    with torch.no_grad():
        tokens, cond = ref.embed(x, t, c, sd)
        assert torch.allclose(net.x_embedder(x) + net.pos_embed, tokens, atol=TOL)
        assert torch.allclose(net.condition(t, c), cond, atol=TOL)
        ours = net.blocks[0](tokens, cond, net.feat_rope)
        assert (ours - ref.block(tokens, cond, sd, 0, heads=12)).abs().max() < TOL
        final = net.unpatchify(net.final_layer(ours, cond))
        assert (final - ref.final_layer(ours, cond, sd)).abs().max() < TOL
        # The check has teeth: the blocks really mix (outputs far from inputs, not 1e-5 apart).
        assert (ours - tokens).abs().max() > 0.1


@pytest.mark.parametrize("container, ema", [("bare", True), ("container", True), ("container", False)])
def test_import_each_container_then_forward_equals_reference(
    container, ema, small_bare, small_container, small_states, latent_stats, decoder_dir, tmp_path
):
    path = small_bare if container == "bare" else small_container
    out = link_decoder(decoder_dir, tmp_path)
    report = import_network(
        path,
        out,
        latent_stats[0],
        ema=ema,
        preset_name="gmem-B/1-lightning",
        overrides={"depth": SMALL_DEPTH},
    )
    expected_weights = small_states[0] if ema else small_states[1]
    assert ("'ema'" in report.detail) == (container == "container" and ema)
    model = load_model(out / "model.safetensors")
    x, t, c = _inputs(2, seed=5)
    with torch.no_grad():
        ours = model.net(x, t, c)
        theirs = ref.forward(expected_weights, x, t, c, heads=12)
    assert (ours - theirs).abs().max() < TOL
    # Null condition of the release's CFG: the zero vector goes through the adapter unchanged.
    with torch.no_grad():
        zeros = torch.zeros_like(c)
        assert (
            model.net(x, t, zeros) - ref.forward(expected_weights, x, t, zeros, heads=12)
        ).abs().max() < TOL


def test_model_file_records_latent_space_decoder_and_release_sampling(
    small_bare, latent_stats, decoder_dir, tmp_path
):
    out = link_decoder(decoder_dir, tmp_path)
    import_network(small_bare, out, latent_stats[0], preset_name="gmem-B/1-lightning", overrides={"depth": 2})
    meta = read_model_meta(out / "model.safetensors")
    _, mean, std = latent_stats
    assert (meta["space"], meta["input_size"], meta["in_channels"]) == ("latent", 16, 32)
    assert (meta["snippet_dim"], meta["encoder"]) == (768, "timm/vit_base_patch14_dinov2")
    assert meta["latent_mean"] == pytest.approx(mean.reshape(-1).tolist(), abs=1e-7)
    assert meta["latent_std"] == pytest.approx(std.reshape(-1).tolist(), abs=1e-7)
    assert meta["latent_multiplier"] == 1.0
    assert meta["decoder"]["kind"] == "vavae-f16d32"
    assert Path(meta["decoder"]["weights"]) == (out / "vae_decoder.safetensors").resolve()
    assert meta["cfg_interval_start"] == 0.89 and meta["diffusion_norm"] == 1.0
    assert meta["last_step_size"] == 0.004 and meta["time_shift"] == 0.3
    assert meta["source_file"] == small_bare.name


def test_full_b1_import_from_the_command_line(release_dir, latent_stats, vavae_ckpt, tmp_path):
    """The one full-size check: B/1 (12 blocks, 137.8M values) bare, preset from shapes, with VAE and bank."""
    import subprocess
    import sys

    sd = fx.random_network_state(fx.B_SHAPES, seed=7)
    path = fx.save_bare(sd, tmp_path / "GMem_B1_network.pth")
    bank = fx.save_full_bank(fx.raw_cls_features(300, seed=3), tmp_path / "bank.pth")
    out = tmp_path / "imported"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "import-official",
            "--network",
            str(path),
            "--vae",
            str(vavae_ckpt[0]),
            "--latent-stats",
            str(latent_stats[0]),
            "--bank",
            str(bank),
            "--rank",
            "20",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "2", "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "gmem-B/1-lightning" in proc.stdout and "projector" in proc.stdout
    path.unlink()  # free 550 MB of disk before loading
    model = load_model(out / "model.safetensors")
    assert model.config.depth == 12 and model.config.hidden_size == 768
    x, t, c = _inputs(1, seed=9)
    with torch.no_grad():
        diff = (model.net(x, t, c) - ref.forward(sd, x, t, c, heads=12)).abs().max()
    assert diff < TOL
    assert model.decoder is not None
    from shared.factors import load_factors
    from training.files.modelfile import check_compatible

    factors = load_factors(out / "bank.safetensors")
    assert factors.rank == 20 and factors.size == 300
    check_compatible(model.config, factors.meta)  # the generator's start-up check passes


# ----------------------------------------------------------------------------- refusals, by name


def _convert(sd: dict) -> None:
    cfg = release_config("gmem-B/1-lightning", torch.zeros(32), torch.ones(32), depth=SMALL_DEPTH)
    convert_network(sd, cfg, where="NET.pth")


def test_missing_key_is_named(small_states):
    sd = dict(small_states[0])
    del sd["blocks.1.mlp.w12.bias"]
    with pytest.raises(IncompatibleArtifacts, match=r"missing keys: blocks\.1\.mlp\.w12\.bias"):
        _convert(sd)


def test_unexpected_key_is_named(small_states):
    sd = dict(small_states[0])
    sd["y_embedder.embedding_table.weight"] = torch.zeros(1001, 768)
    with pytest.raises(IncompatibleArtifacts, match=r"unexpected keys: y_embedder\.embedding_table\.weight"):
        _convert(sd)


def test_wrong_shape_is_named(small_states):
    sd = dict(small_states[0])
    sd["final_layer.linear.weight"] = torch.zeros(64, 768)  # learn_sigma=True would double the channels
    with pytest.raises(
        IncompatibleArtifacts, match=r"final_layer\.linear\.weight \[64, 768\] \(ours \[32, 768\]\)"
    ):
        _convert(sd)


def test_other_rope_layout_is_refused(small_states):
    sd = dict(small_states[0])
    cos, sin = sd["feat_rope.freqs_cos"], sd["feat_rope.freqs_sin"]
    # Rows and columns swapped: the table of a transposed token order.
    perm = torch.arange(256).view(16, 16).T.reshape(-1)
    sd["feat_rope.freqs_cos"], sd["feat_rope.freqs_sin"] = cos[perm], sin[perm]
    with pytest.raises(IncompatibleArtifacts, match=r"feat_rope tables differ"):
        _convert(sd)


def test_training_container_without_requested_weights(small_states):
    with pytest.raises(IncompatibleArtifacts, match=r"no 'ema'.*--no-ema"):
        select_network_state({"model": small_states[0], "config": {}}, ema=True)


def test_ddp_prefixes_are_stripped(small_states):
    state, detail = select_network_state(
        {"model": {"module.module." + k: v for k, v in small_states[1].items()}, "ema": {}}, ema=False
    )
    assert set(state) == set(small_states[1]) and "'model'" in detail


class _Sneaky:
    def __reduce__(self):  # what a malicious pickle would do: run code at load time
        return (os.system, ("echo pwned",))


def test_pickles_with_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"pos_embed": torch.zeros(1), "payload": _Sneaky()}, path)
    with pytest.raises(ArtifactFileError, match=r"weights_only=True"):
        read_release_file(path, "network")


def test_cli_reports_errors_without_traceback(small_states, latent_stats, tmp_path):
    sd = dict(small_states[0])
    del sd["t_embedder.mlp.2.weight"]
    path = fx.save_bare(sd, tmp_path / "broken.pth")
    runner = CliRunner()
    res = runner.invoke(
        build_app(),
        [
            "import-official",
            "--network",
            str(path),
            "--latent-stats",
            str(latent_stats[0]),
            "--preset",
            "gmem-B/1-lightning",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    # depth 2 matches no release preset's 12 blocks: the missing blocks are named, and so is the dropped key
    assert res.exit_code == 2
    assert "t_embedder.mlp.2.weight" in res.output and "blocks.2-11.* (whole blocks)" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(
        build_app(), ["import-official", "--network", str(path), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "--latent-stats" in res.output
    res = runner.invoke(
        build_app(),
        [
            "import-official",
            "--network",
            str(path),
            "--latent-stats",
            str(latent_stats[0]),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 2 and "match no release network" in res.output
