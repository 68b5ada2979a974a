"""Export of our latent network to the release layout, and back: keys, shapes, weights and forward agree."""

from __future__ import annotations

import torch

from tests.training.official import fixtures as fx
from tests.training.official import reference as ref
from tests.training.official.conftest import SMALL_DEPTH
from training.cli import build_app
from training.files.modelfile import load_model, save_model
from training.network.config import preset
from training.network.model import GMemDiT
from training.official.importer import import_network


def _our_model(path, seed: int = 7):
    torch.manual_seed(seed)
    cfg = preset(
        "gmem-B/1",
        depth=SMALL_DEPTH,
        latent_mean=tuple([0.1] * 32),
        latent_std=tuple([0.9] * 32),
        decoder={"kind": "vavae-f16d32", "weights": "vae_decoder.safetensors"},
    )
    net = GMemDiT(cfg)
    with torch.no_grad():  # adaLN-zero would make every output 0; random weights give the check teeth
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    save_model(path, net, cfg)
    return net.eval()


def test_export_writes_release_keys_and_imports_back_identically(tmp_path, decoder_dir):
    from typer.testing import CliRunner

    net = _our_model(tmp_path / "ours.safetensors")
    res = CliRunner().invoke(
        build_app(),
        [
            "export-official",
            "--model",
            str(tmp_path / "ours.safetensors"),
            "--out",
            str(tmp_path / "rel" / "GMem_B.pth"),
        ],
    )
    assert res.exit_code == 0, res.output
    exported = torch.load(tmp_path / "rel" / "GMem_B.pth", weights_only=True)
    # The release's key set and shapes (written from the facts, with the REPA projector), nothing else.
    assert {k: tuple(v.shape) for k, v in exported.items()} == fx.lightningdit_shapes(SMALL_DEPTH, 768, 12)
    stats = torch.load(tmp_path / "rel" / "latents_stats.pt", weights_only=True)
    assert stats["mean"].shape == (1, 32, 1, 1) and torch.allclose(
        stats["std"], torch.full((1, 32, 1, 1), 0.9)
    )
    # The independent reference forward on the exported dict equals our network.
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 32, 16, 16, generator=g), torch.rand(2, generator=g)
    c = torch.nn.functional.normalize(torch.randn(2, 768, generator=g), dim=1)
    with torch.no_grad():
        assert torch.allclose(net(x, t, c), ref.forward(exported, x, t, c, heads=12), atol=1e-4)
    # And back: import-official of the export gives the same weights, projector included.
    out = tmp_path / "back"
    out.mkdir()
    (out / "vae_decoder.safetensors").hardlink_to(decoder_dir / "vae_decoder.safetensors")
    import_network(
        tmp_path / "rel" / "GMem_B.pth",
        out,
        tmp_path / "rel" / "latents_stats.pt",
        preset_name="gmem-B/1",
        overrides={"depth": SMALL_DEPTH},
    )
    back = load_model(out / "model.safetensors").net.state_dict()
    assert set(back) == set(exported) and all(torch.equal(back[k], exported[k]) for k in back)


def test_export_refuses_a_network_outside_the_release_layout(tmp_path):
    from typer.testing import CliRunner

    model = tmp_path / "tiny.safetensors"
    save_model(model, GMemDiT(preset("gmem-tiny-latent")), preset("gmem-tiny-latent"))
    res = CliRunner().invoke(
        build_app(), ["export-official", "--model", str(model), "--out", str(tmp_path / "x.pth")]
    )
    assert (
        res.exit_code == 2
        and "in_channels: 4 (release 32)" in res.output
        and not (tmp_path / "x.pth").exists()
    )
