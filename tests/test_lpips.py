"""LPIPS from local weight files (pure-torch VGG16), and the VAE trainer with `--lpips-weight`."""

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from portrait_rt.data.shards import write_synthetic_shards
from portrait_rt.training.common import TrainConfig
from portrait_rt.training.lpips import LPIPS
from portrait_rt.training.vae import VAELossWeights, VAETrainer, add_cli_arguments, build_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Random weights saved as torchvision's `vgg16` state dict and as the lpips package's `vgg.pth`."""
    root = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    model = LPIPS()
    backbone = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    backbone["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's classifier: ignored
    heads = {k: v.abs() for k, v in model.state_dict().items() if k.startswith("lin")}  # lpips heads are >= 0
    torch.save(backbone, root / "vgg16.pth")
    torch.save(heads, root / "vgg.pth")
    return root / "vgg16.pth", root / "vgg.pth", backbone, heads


@pytest.fixture(scope="module")
def lpips(weight_files):
    return LPIPS.from_files(*weight_files[:2])


def test_from_files_loads_both_formats(weight_files, lpips):
    _, _, backbone, heads = weight_files
    assert sorted(heads) == [f"lin{k}.model.1.weight" for k in range(5)]
    torch.testing.assert_close(lpips.features[28].weight, backbone["features.28.weight"])
    torch.testing.assert_close(lpips.lin3.model[1].weight, heads["lin3.model.1.weight"])
    assert len(lpips.features) == 30 and not lpips.training
    assert not any(p.requires_grad for p in lpips.parameters())


def test_from_files_rejects_missing_and_mismatched_files(weight_files, tmp_path):
    backbone_path, heads_path, backbone, heads = weight_files
    with pytest.raises(ValueError, match="nowhere.pth.*no such file.*vgg16"):
        LPIPS.from_files(tmp_path / "nowhere.pth", heads_path)
    with pytest.raises(ValueError, match="nowhere.pth.*no such file.*vgg.pth"):
        LPIPS.from_files(backbone_path, tmp_path / "nowhere.pth")
    torch.save({k.replace("features.", "backbone."): v for k, v in backbone.items()}, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match="renamed.pth.*does not match"):
        LPIPS.from_files(tmp_path / "renamed.pth", heads_path)
    torch.save({k: v[:, :8] for k, v in heads.items()}, tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match="narrow.pth.*wrong shapes"):
        LPIPS.from_files(backbone_path, tmp_path / "narrow.pth")
    (tmp_path / "heads-swapped.pth").write_bytes(backbone_path.read_bytes())
    with pytest.raises(ValueError, match="heads-swapped.*does not match"):
        LPIPS.from_files(backbone_path, tmp_path / "heads-swapped.pth")


def test_distance_properties_and_gradients(lpips):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    d = lpips(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(lpips(y, x), d)
    assert lpips(y, y).abs().max() == 0
    d.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips.parameters())


def test_vae_trainer_with_lpips_logs_it_and_keeps_it_out_of_saves(weight_files, tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", 1, resolution=64, duration=0.5)
    out = tmp_path / "vae"

    def trainer(**kw):
        cfg = TrainConfig(output_dir=str(out), checkpointing_steps=100, log_every=1, learning_rate=1e-3, **kw)
        return VAETrainer(cfg, shards.root, preset="tiny", stages=[(5, 1, 2)], weights=VAELossWeights(lpips=0.1),
                          lpips_backbone=str(weight_files[0]), lpips_heads=str(weight_files[1]))  # fmt: skip

    # One step, checkpoint and stop (max_minutes=0); a fresh trainer resumes from that checkpoint for step 2.
    assert [r["step"] for r in trainer(max_minutes=0).train()] == [1]
    assert [r["step"] for r in trainer().train()] == [2]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2] and all(r["lpips"] > 0 for r in logged)

    vae_keys = load_file(out / "vae" / "diffusion_pytorch_model.safetensors").keys()
    checkpoint_keys = load_file(out / "checkpoints" / "checkpoint-2" / "model.safetensors").keys()
    assert vae_keys and all(k.startswith("vae.") for k in checkpoint_keys)
    assert not [k for k in [*vae_keys, *checkpoint_keys] if "lin0" in k or "features.28" in k]
    ema = torch.load(out / "checkpoints" / "checkpoint-2" / "custom_checkpoint_0.pkl", weights_only=False)
    assert len(ema["shadow_params"]) == len(checkpoint_keys)


def test_cli_lpips_weight_needs_both_paths(tmp_path):
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(["--data", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--max-steps", "1"])
    assert args.lpips_weight == 0 and args.lpips_backbone is None and args.lpips_heads is None
    args.lpips_weight, args.lpips_backbone = 0.1, "vgg16.pth"
    with pytest.raises(ValueError, match="--lpips-backbone.*--lpips-heads"):
        build_trainer(args)
