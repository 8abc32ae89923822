"""Training on the tiny preset: each trainer, exact resume, a 2-process CPU run, export; and the bundled model."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from portrait_rt.data.shards import ClipStore, write_synthetic_shards
from portrait_rt.training.common import TrainConfig
from portrait_rt.training.dit import DiTTrainer
from portrait_rt.training.latents import cache_latents, encode_clip
from portrait_rt.training.vae import (
    VAELossWeights,
    VAETrainer,
    VAETrainingModule,
    mouth_region,
    parse_stages,
    reference_flow,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "portrait-rt-demo"
BACKGROUND_FLOOR_DB = 17.0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three 2-second synthetic clips at 64² (50 frames = 13 latent frames: one tiny KV window of 8, plus room)."""
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), 3, resolution=64, duration=2.0)


def _vae_config(out, **kw):
    return TrainConfig(output_dir=str(out), checkpointing_steps=100, log_every=1, learning_rate=1e-3, **kw)


@pytest.fixture(scope="module")
def trained_vae(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    trainer = VAETrainer(_vae_config(out), shards.root, preset="tiny", stages=[(5, 2, 2), (9, 1, 1)])
    history = trainer.train()
    return out, history


def test_the_demo_training_commands_parse():
    """Every `python -m portrait_rt train|export|eval ...` line of scripts/train_demo.sh (the bundled model's exact
    commands) parses with today's flags: the flags derived from `TrainConfig` and `VAELossWeights` kept their names."""
    import os
    import re
    import shlex

    from portrait_rt import cli

    script = (REPO / "scripts" / "train_demo.sh").read_text().replace("\\\n", " ")
    commands = re.findall(r"^\s*python -m portrait_rt (train|export|eval) (.*)$", script, flags=re.M)
    assert len(commands) >= 20
    env = {"WORK": "runs/demo", "THREADS": "1", "VAE_CONFIG": "{}"}
    for name, rest in commands:
        rest = rest.replace('"$(cat scripts/demo_model_notes.md)"', "notes").split("#")[0]
        argv = [re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], a) for a in shlex.split(rest)]
        parser = cli.ArgumentParser(prog=name)
        __import__(cli.SUBCOMMANDS[name][0], fromlist=["_"]).add_cli_arguments(parser)
        args = parser.parse_args(argv)
        if name == "train" and args.step != "latents":
            assert os.fspath(args.output_dir).startswith("runs/demo")


def test_parse_stages():
    assert parse_stages("5x8:1200,17x4:400") == [(5, 8, 1200), (17, 4, 400)]
    with pytest.raises(ValueError, match="1 \\+ 4n"):
        parse_stages("6x2:10")
    with pytest.raises(ValueError, match="FRAMESxBATCH"):
        parse_stages("5:10")


def test_vae_trainer_steps_and_latent_normalisation(trained_vae):
    out, history = trained_vae
    assert [r["step"] for r in history] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["l1"] > 0 for r in history)
    from portrait_rt.models.vae import CausalVideoVAE

    vae = CausalVideoVAE.from_pretrained(out / "vae")
    # The trainer measured the latents and set the DiT normalisation from them (defaults are 0 and 1).
    assert vae.config.scaling_factor != 1.0 and vae.config.shift_factor != 0.0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3] and "psnr" in logged[0]


def test_mouth_region_finds_the_mouth_interior(shards):
    from portrait_rt.mouth import MOUTH_INTERIOR_RGB
    from portrait_rt.training.vae import frames_to_tensor

    frames, _ = shards.load(0)
    video = frames_to_tensor(frames).movedim(0, 1)[None]  # (1, 3, T, H, W)
    mask = mouth_region(video)
    assert mask.shape == (1, 1, *video.shape[2:]) and 0 <= mask.min() and mask.max() == 1
    assert 0 < mask.mean() < 0.05  # the mouth only, in the frames where it is open
    # A single key-coloured pixel: 1 on it, dilated to a 7x7 square (3 px), nothing elsewhere.
    blank = torch.zeros(1, 3, 1, 16, 16)
    blank[0, :, 0, 8, 8] = torch.tensor(MOUTH_INTERIOR_RGB) / 127.5 - 1
    m = mouth_region(blank)[0, 0, 0]
    assert m[8, 8] == 1 and m[5:12, 5:12].min() == 1 and m.sum() == 49
    # Found in the reconstruction too (a mouth drawn where the target has none is penalised).
    assert mouth_region(torch.zeros_like(blank), blank).sum() == 49


def test_vae_mouth_losses_log_train_and_stay_out_of_the_vae(shards, tmp_path):
    from safetensors.torch import load_file

    config = _vae_config(tmp_path)
    weights = VAELossWeights(mouth=30, mouth_probe=1, mouth_sync=1)
    trainer = VAETrainer(config, shards.root, preset="tiny", stages=[(5, 2, 2)], weights=weights)
    history = trainer.train()
    assert all(np.isfinite(r["loss"]) and r["loss"] > r["l1"] and r["mouth_l1"] > 0 for r in history)
    assert all(r["mouth_probe"] > 0 and r["mouth_sync"] > 0 for r in history)
    saved = load_file(tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    assert not any("mouth_probe" in k for k in saved)  # the probe is a training aid, discarded with the module
    with pytest.raises(ValueError, match="--mouth-sync-weight -0.5: loss weights must be >= 0"):
        VAELossWeights(mouth_sync=-0.5)


def test_freeze_encoder_trains_the_decoder_only(trained_vae, shards, tmp_path):
    from safetensors.torch import load_file

    out, _ = trained_vae
    config = _vae_config(tmp_path, ema_decay=0.0)
    VAETrainer(config, shards.root, init_from=str(out / "vae"), stages=[(5, 2, 2)], freeze_encoder=True).train()
    before, after = (load_file(p / "diffusion_pytorch_model.safetensors") for p in (out / "vae", tmp_path / "vae"))
    unchanged = {name: torch.equal(w, before[name]) for name, w in after.items()}
    assert all(same for name, same in unchanged.items() if name.startswith("encoder_"))  # the latent space stays
    assert not all(same for name, same in unchanged.items() if name.startswith("decoder_2"))  # the decoder trains


def test_stream_context_lengthens_the_window_and_trains_on_its_tail(trained_vae, shards, tmp_path):
    """`context_frames=8`: each window is 0, 4 or 8 frames longer than the stage's, its first k latent frames only
    fill the decoder's cache, and the loss is on the frames after them (so a longer context never means a bigger
    reconstruction)."""
    out, _ = trained_vae
    trainer = VAETrainer(_vae_config(tmp_path), shards.root, init_from=str(out / "vae"), stages=[(5, 1, 3)],
                         freeze_encoder=True, context_frames=8)  # fmt: skip
    batches = {}  # context latent frames -> a batch with that context
    for seed in range(12):
        batch = trainer.make_batch(0, 0, torch.Generator().manual_seed(seed))
        assert batch["video"].shape[2] == 5 + 4 * batch["context_latents"]
        batches.setdefault(batch["context_latents"], batch)
    assert set(batches) == {0, 1, 2}
    module = trainer.build_module()
    frames = []
    hook = module.vae.register_forward_hook(lambda m, args, out: frames.append(out[0].shape[2]))
    loss, _ = module(**batches[2])
    hook.remove()
    assert frames == [5 + 4 * 2 - (4 * 2 - 3)] and torch.isfinite(loss)
    assert all(np.isfinite(r["loss"]) for r in trainer.train())
    with pytest.raises(ValueError, match="multiple of 4"):
        VAETrainer(_vae_config(tmp_path / "x"), shards.root, preset="tiny", stages=[(5, 1, 1)], context_frames=6)


def test_grow_a_trained_vae_with_the_reference_warp(shards, tmp_path):
    """`--init-from` a VAE without the reference warp plus `--config-json '{"ref_warp_channels": 8}'`: the trained
    weights carry over, the warp is the only new module and it trains (with the image-gradient term on)."""
    from safetensors.torch import load_file

    plain = tmp_path / "plain"
    VAETrainer(_vae_config(plain), shards.root, preset="tiny", stages=[(5, 2, 1)],
               config_overrides={"ref_warp_channels": 0}).train()  # fmt: skip
    config = _vae_config(tmp_path / "grown", ema_decay=0.0)
    grow = {"config_overrides": {"ref_warp_channels": 8}, "weights": VAELossWeights(gradient=1.0)}
    history = VAETrainer(config, shards.root, init_from=str(plain / "vae"), stages=[(5, 2, 2)], freeze_encoder=True,
                         **grow).train()  # fmt: skip
    assert all(np.isfinite(h["gradient_l1"]) for h in history)
    before = load_file(plain / "vae" / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "grown" / "vae" / "diffusion_pytorch_model.safetensors")
    assert set(after) - set(before) and all(k.startswith("reference_warp.") for k in set(after) - set(before))
    assert after["reference_warp.head.4.weight"].abs().sum() > 0  # left zero, it trained
    with pytest.raises(ValueError, match="changes trained modules"):
        VAETrainer(_vae_config(tmp_path / "bad"), shards.root, init_from=str(tmp_path / "grown" / "vae"),
                   stages=[(5, 2, 1)], config_overrides={"ref_warp_channels": 0}).train()  # fmt: skip


def test_reference_flow_finds_a_moved_head(shards):
    """The teacher flow for a frame whose content sits 3 px right and 2 px up of the reference: (-3, +2) px, where the
    reference really is; a frame that is the reference gives ~0."""
    frames, _ = ClipStore(shards.root).load(0)
    reference = frames[0]
    moved = np.roll(reference, (-2, 3), axis=(0, 1))  # content 2 px up, 3 px right
    flow, valid = reference_flow(np.stack([moved, reference]), reference[None])
    assert flow.shape == (2, 1, 2, 64, 64) and valid.shape == (2, 1, 1, 64, 64)
    inner = (slice(8, -8), slice(8, -8))
    assert valid[0, 0, 0][inner].mean() > 0.9
    assert np.median(flow[0, 0, 0][inner]) == pytest.approx(-3, abs=0.3)
    assert np.median(flow[0, 0, 1][inner]) == pytest.approx(2, abs=0.3)
    assert np.abs(flow[1, 0]).mean() < 0.05


def test_flow_loss_supervises_the_warp_head_only(shards):
    """`flow_weight`: the head's zero-initialised flow against the teacher's costs the teacher's mean |flow| over
    the valid cells, and its gradient reaches the warp head and nothing else (the decoder sees no flow loss)."""
    from portrait_rt.models.vae import CausalVideoVAE
    from portrait_rt.presets import get_preset

    torch.manual_seed(0)
    vae = CausalVideoVAE(**{**get_preset("tiny")["vae"], "resolution": 64, "ref_warp_channels": 8})
    module = VAETrainingModule(vae, VAELossWeights(kl=0.0, flow=1.0), sample_posterior=False)
    video = torch.rand(1, 3, 5, 64, 64) * 2 - 1
    references = torch.rand(1, 2, 3, 64, 64) * 2 - 1
    flow = torch.full((1, 5, 2, 2, 64, 64), 1.5)
    flow[:, :, 1] = -0.5  # reference 2 moved the other way
    valid = torch.ones(1, 5, 2, 1, 64, 64)
    valid[..., :32, :] = 0  # the top half has no teacher

    def gradients(flow_weight):
        module.weights.flow = flow_weight
        module.zero_grad()
        loss, logs = module(video, references, torch.Generator().manual_seed(0), flow=flow, flow_valid=valid)
        loss.backward()
        return logs, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    logs, with_flow = gradients(1.0)
    assert logs["flow_l1"] == pytest.approx(1.0)  # mean of |1.5| and |-0.5| over the bottom half only
    _, without = gradients(0.0)
    changed = {n for n, g in with_flow.items() if not torch.allclose(g, without[n], atol=1e-7)}
    assert changed and all(n.startswith("vae.reference_warp.head.") for n in changed)
    with pytest.raises(ValueError, match="ref_warp_channels"):
        no_warp = CausalVideoVAE(**{**get_preset("tiny")["vae"], "ref_warp_channels": 0})
        VAETrainingModule(no_warp, VAELossWeights(flow=1))


def test_adversarial_term_keeps_the_discriminator_and_the_decoder_apart(shards, tmp_path):
    """`weights.adversarial`: the discriminator's gradient is that of its own hinge loss on the detached
    reconstruction, the generator term changes the VAE's gradients and nothing in the discriminator, the
    discriminator learns to tell sharp frames from blurred ones, and it is not saved with the VAE."""
    from safetensors.torch import load_file

    from portrait_rt.models.vae import CausalVideoVAE
    from portrait_rt.presets import get_preset
    from portrait_rt.training.vae import PatchDiscriminator, adversarial_losses

    torch.manual_seed(0)
    vae = CausalVideoVAE(**{**get_preset("tiny")["vae"], "resolution": 64})
    module = VAETrainingModule(vae, VAELossWeights(kl=0.0, adversarial=0.5), sample_posterior=False)
    video, references = torch.rand(1, 3, 5, 64, 64) * 2 - 1, torch.rand(1, 1, 3, 64, 64) * 2 - 1

    def gradients(weight):
        module.weights.adversarial = weight
        module.zero_grad()
        loss, logs = module(video, references, torch.Generator().manual_seed(0))
        loss.backward()
        return logs, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    logs, with_term = gradients(0.5)
    assert {"adversarial", "discriminator"} <= set(logs)
    _, without = gradients(0.0)
    changed = {n for n, g in with_term.items() if not torch.allclose(g, without[n], atol=1e-8)}
    assert changed and all(n.startswith("vae.") for n in changed)  # the generator term: the VAE only
    module.zero_grad()
    recon = module.vae(video, references, False)[0].detach()
    d = module.discriminator
    critic = torch.relu(1 - d(video.movedim(2, 1)[0])).mean() + torch.relu(1 + d(recon.movedim(2, 1)[0])).mean()
    critic.backward()
    for n, p in d.named_parameters():
        torch.testing.assert_close(with_term[f"discriminator.{n}"], p.grad)

    # The critic's sign: trained on its loss alone, it scores sharp frames above their blur.
    sharp = torch.rand(1, 3, 4, 64, 64) * 2 - 1
    blurred = torch.nn.functional.avg_pool3d(sharp, (1, 5, 5), stride=1, padding=(0, 2, 2), count_include_pad=False)
    critic_only = PatchDiscriminator()
    optimizer = torch.optim.Adam(critic_only.parameters(), lr=1e-3)
    for _ in range(20):
        generator_loss, critic_loss = adversarial_losses(critic_only, blurred, sharp)
        optimizer.zero_grad()
        critic_loss.backward()
        optimizer.step()
    real, fake = (-adversarial_losses(critic_only, v, sharp)[0] for v in (sharp, blurred))
    assert real > fake + 1.0

    weights = VAELossWeights(adversarial=0.1)
    trainer = VAETrainer(_vae_config(tmp_path), shards.root, preset="tiny", stages=[(5, 1, 2)], weights=weights)
    assert all(r["discriminator"] > 0 and np.isfinite(r["adversarial"]) for r in trainer.train())
    assert not any("discriminator" in k for k in load_file(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="--adversarial-weight -1"):
        VAELossWeights(adversarial=-1)


def test_mouth_area_counts_the_interior_per_frame():
    from portrait_rt.mouth import MOUTH_INTERIOR_RGB
    from portrait_rt.training.vae import MOUTH_AREA_SCALE, mouth_area

    video = torch.zeros(1, 3, 3, 16, 16)
    video[0, :, 1, 4:6, 4:8] = torch.tensor(MOUTH_INTERIOR_RGB).view(3, 1, 1) / 127.5 - 1  # 8 pixels in frame 1
    torch.testing.assert_close(mouth_area(video), torch.tensor([[0.0, 8 / 256 / MOUTH_AREA_SCALE, 0.0]]))


def test_mouth_sync_loss_sees_a_mouth_one_frame_late_and_pulls_it_into_place():
    """A reconstruction whose mouth closes a frame late costs the whole change of area at that frame, and the loss's
    gradient reaches that frame's mouth pixels only (the soft colour key is differentiable)."""
    from portrait_rt.mouth import MOUTH_INTERIOR_RGB
    from portrait_rt.training.vae import mouth_area

    interior = torch.tensor(MOUTH_INTERIOR_RGB).view(3, 1, 1, 1) / 127.5 - 1
    target = torch.zeros(1, 3, 5, 16, 16)
    target[0, :, :2, 4:6, 4:8] = interior  # the mouth closes at frame 2
    late = target.clone()
    # ... and at frame 3 in the reconstruction, whose frame 2 still shows it, 60 off the key (membership 2/3)
    late[0, :, 2, 4:6, 4:8] = interior[:, 0] + torch.tensor([60 / 127.5, 0, 0]).view(3, 1, 1)
    late.requires_grad_()
    gap = (mouth_area(late) - mouth_area(target)).abs()
    assert gap[0, 2] > 4.0 and gap[0, [0, 1, 3, 4]].max() == 0
    gap.sum().backward()
    grad = late.grad[0].abs()
    assert grad[:, 2, 4:6, 4:8].sum() > 0
    grad[:, 2, 4:6, 4:8] = 0
    assert grad.sum() == 0  # nowhere else: the other frames' areas match, the background is far from the key
    with torch.no_grad():  # a small step down the gradient closes the late mouth: the gap at frame 2 shrinks
        stepped = late - 0.05 * late.grad
        assert (mouth_area(stepped) - mouth_area(target)).abs()[0, 2] < gap[0, 2] - 1.0


def test_resume_equals_uninterrupted(shards, tmp_path):
    stages = [(5, 1, 2), (9, 1, 2)]
    full = VAETrainer(_vae_config(tmp_path / "a"), shards.root, preset="tiny", stages=stages).train()
    # stop_at_step=2: checkpoint after step 2 and stop, then a fresh trainer resumes from that checkpoint.
    first = VAETrainer(_vae_config(tmp_path / "b", stop_at_step=2), shards.root, preset="tiny", stages=stages).train()
    assert [r["step"] for r in first] == [1, 2]
    rest = VAETrainer(_vae_config(tmp_path / "b"), shards.root, preset="tiny", stages=stages).train()
    assert [r["step"] for r in rest] == [3, 4]
    np.testing.assert_allclose([r["loss"] for r in first + rest], [r["loss"] for r in full], rtol=1e-5)
    a, b = (torch.load(p / "checkpoints/checkpoint-4/custom_checkpoint_0.pkl", weights_only=False) for p in
            (tmp_path / "a", tmp_path / "b"))  # fmt: skip
    for x, y in zip(a["shadow_params"], b["shadow_params"]):  # EMA weights too
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_streamed_latent_cache_matches_one_shot(trained_vae, shards, tmp_path):
    from portrait_rt.models.vae import CausalVideoVAE

    vae = CausalVideoVAE.from_pretrained(trained_vae[0] / "vae")
    frames, _ = shards.load(0)
    with torch.no_grad():
        one_shot = vae.encode(
            torch.from_numpy(np.array(frames[:49])).permute(3, 0, 1, 2)[None] / 127.5 - 1
        ).latent_dist.mode()
    torch.testing.assert_close(encode_clip(vae, frames, chunk_latents=2)[:, :13], one_shot[0], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def latents(trained_vae, shards, tmp_path_factory):
    from portrait_rt.models.vae import CausalVideoVAE

    path = tmp_path_factory.mktemp("latents") / "latents.pt"
    cache_latents(CausalVideoVAE.from_pretrained(trained_vae[0] / "vae"), shards, path, references_per_clip=3)
    return path


def test_latent_cache(latents, shards):
    cache = torch.load(latents, weights_only=True)
    assert len(cache["latents"]) == len(shards) == 3
    assert cache["latents"][0].shape == (64, 13, 1, 1) and cache["references"][0].shape == (3, 64, 1, 1)
    assert cache["scaling_factor"] != 1.0


def test_dit_trainer_and_export(latents, trained_vae, tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "dit"), max_steps=3, batch_size=2, log_every=1, learning_rate=1e-3)
    trainer = DiTTrainer(cfg, str(latents), preset="tiny", stream_start_prob=0.5)
    batch = trainer.make_batch(0, 0, torch.Generator().manual_seed(0))
    assert batch["latents"].shape == (2, 64, 8, 1, 1)  # a window of kv_window = 8 latent frames
    assert batch["audio"].shape[1] % 640 == 0
    history = trainer.train()
    assert len(history) == 3 and all(np.isfinite(r["loss"]) for r in history)

    from portrait_rt.pipeline import PortraitRTPipeline
    from portrait_rt.training.export import export

    export(trained_vae[0] / "vae", tmp_path / "dit", tmp_path / "pipe", metrics={"lipsync_r": 0.5})
    assert not list((tmp_path / "pipe").rglob("*.bin"))  # safetensors only
    assert "lip-sync r" in (tmp_path / "pipe" / "README.md").read_text()
    pipe = PortraitRTPipeline.from_pretrained(tmp_path / "pipe")
    frame = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    out = pipe([frame], (np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1, 16000),
               num_inference_steps=2, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.frames.shape == (25, 64, 64, 3)


def _ddp_train_then_resume(latents: str, out: str) -> None:
    """Runs in each of the 2 launched processes: 2 steps, then a fresh trainer resumes to 3."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # forked from a process whose state says 1 process
    torch.set_num_threads(1)
    for steps in (2, 3):
        cfg = TrainConfig(output_dir=out, max_steps=steps, batch_size=1, log_every=1, checkpointing_steps=100)
        trainer = DiTTrainer(cfg, latents, preset="tiny")
        assert trainer.accelerator.num_processes == 2
        history = trainer.train()
        if trainer.accelerator.is_main_process:
            with open(Path(out) / f"history_{steps}.json", "w") as f:
                json.dump([r["step"] for r in history], f)


def test_two_process_cpu_run_trains_and_resumes(latents, tmp_path):
    """Two CPU processes (DDP over gloo, what `accelerate launch --num_processes 2 --cpu` starts) train 2 steps;
    a new trainer then resumes from the checkpoint and runs step 3 only."""
    out = tmp_path / "ddp"
    # From a fresh interpreter: forking this pytest process, whose OpenMP thread pool earlier tests started, can
    # deadlock the children in their first parallel region.
    code = (
        "import sys; from accelerate import debug_launcher; from tests.test_training import _ddp_train_then_resume; "
        "debug_launcher(_ddp_train_then_resume, (sys.argv[1], sys.argv[2]), num_processes=2)"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code, str(latents), str(out)], cwd=root, check=True, timeout=600)
    assert json.loads((out / "history_2.json").read_text()) == [1, 2]
    assert json.loads((out / "history_3.json").read_text()) == [3]  # resumed, not restarted
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.fixture(scope="module")
def demo_run():
    """The bundled model on one held-out (split "eval") 4-second clip, first frame as the reference."""
    from portrait_rt.data.synthetic import render_clip
    from portrait_rt.pipeline import PortraitRTPipeline

    assert (DEMO / "model_index.json").is_file(), "assets/portrait-rt-demo is missing: run scripts/train_demo.sh"
    pipe = PortraitRTPipeline.from_pretrained(DEMO)
    pipe.set_progress_bar_config(disable=True)
    clip = render_clip(3, resolution=pipe.resolution, duration=4.0, split="eval")
    out = pipe([clip.frames[0]], (clip.audio, clip.sample_rate), generator=torch.Generator().manual_seed(0))
    return pipe, clip, out


def test_bundled_demo_model_follows_the_reference(demo_run):
    """The VAE uses its references (PSNR with one reference >= 17 dB and above none; three references >= 1 dB above
    none) and the generated video keeps the reference's background (>= 17 dB in every 10 s window). Floors far below
    the shipped model's figures (scripts/demo_model_notes.md has them per version), above what a broken model scores:
    a fresh VAE reconstructs at ~13 dB whatever its references."""
    from portrait_rt.eval.metrics import background_drift
    from portrait_rt.eval.model_report import vae_psnr_by_references

    pipe, clip, out = demo_run
    assert out.frames.shape == (100, pipe.resolution, pipe.resolution, 3)
    psnr = vae_psnr_by_references(pipe.vae, [clip])
    assert psnr[1] >= 17.0 and psnr[1] > psnr[0] and psnr[3] - psnr[0] >= 1.0, psnr
    background = background_drift(out.frames, clip.frames[0], [clip.meta["body_box"], clip.meta["face_box"]])
    assert min(background["psnr"]) >= BACKGROUND_FLOOR_DB, background["psnr"]


def test_bundled_demo_model_keeps_the_detail(demo_run):
    """The model looks like its reference, not a blur (issue 14): the VAE alone and the generated video keep >= 0.5 of
    the ground truth's detail (Laplacian variance) and the VAE's background is >= 35 dB from the ground truth. A model
    whose reference warp stopped copying the reference keeps ~0.04 and ~22 dB; the shipped model ~0.9 and ~59 dB."""
    from portrait_rt.eval.metrics import background_mask, detail_ratio
    from portrait_rt.eval.model_report import masked_psnr, vae_reconstruct

    pipe, clip, out = demo_run
    recon = vae_reconstruct(pipe.vae, clip.frames)
    truth = clip.frames[: len(recon)]
    assert detail_ratio(recon, truth) >= 0.5
    assert detail_ratio(out.frames, clip.frames) >= 0.5
    background = background_mask(pipe.resolution, pipe.resolution, [clip.meta["body_box"], clip.meta["face_box"]])
    assert masked_psnr(recon, truth, background) >= 35.0


def test_bundled_demo_vae_keeps_the_mouth_over_a_whole_clip(demo_run):
    """The VAE's reconstruction of the whole 100-frame clip (one causal pass, as the DiT's latents are cached and the
    stream is decoded) follows the real mouth: r >= 0.6 between measured openings. A VAE trained on short clips only
    loses the mouth on long ones (~0.3), one without a mouth scores ~0.07; the shipped model ~0.84."""
    from portrait_rt.eval.metrics import mouth_opening, pearson
    from portrait_rt.eval.model_report import vae_reconstruct

    pipe, clip, _ = demo_run
    recon = vae_reconstruct(pipe.vae, clip.frames)  # no_grad inside
    r = pearson(mouth_opening(recon), mouth_opening(clip.frames[: len(recon)]))
    assert r >= 0.6, r


def test_bundled_demo_model_opens_the_mouth_for_speech_only(demo_run):
    """The audio drives the mouth: 1 s of silence, the clip's speech, 1 s of silence; the mouth opens >= 0.01 of the
    frame height in speech and at most 0.4 times that in silence. A model that ignores the audio scores a ratio near
    1, one without a mouth opens 0; the shipped model opens ~0.03 in speech and ~0 in silence."""
    from portrait_rt.eval.metrics import mouth_opening

    pipe, clip, _ = demo_run
    silence = np.zeros(25 * 640, np.float32)
    audio = np.concatenate([silence, clip.audio, silence])
    out = pipe([clip.frames[0]], (audio, clip.sample_rate), generator=torch.Generator().manual_seed(0))
    opening = mouth_opening(out.frames)
    speech, silent = opening[30:125].mean(), np.r_[opening[3:22], opening[133:]].mean()
    assert speech >= 0.01 and silent <= 0.4 * speech, (speech, silent)


def test_bundled_demo_model_lipsyncs(demo_run):
    """Lip-sync r >= 0.6 at an offset of at most one frame (the target, issue 14, is 0.85 on average over 8 held-out
    clips: the model card's table). The floor sits below the target because one 4-second clip varies by about +-0.1;
    a model that ignores the audio scores ~0-0.3, or finds its best offset far from 0."""
    from portrait_rt.eval.metrics import lipsync_score

    _, clip, out = demo_run
    score = lipsync_score(out.frames, clip.audio, clip.sample_rate)
    assert score["r"] >= 0.6 and abs(score["offset"]) <= 1, (score["r"], score["offset"])


def test_shards_reject_wrong_frames(tmp_path):
    store = ClipStore.create(tmp_path, 64)
    with pytest.raises(ValueError, match="uint8"):
        store.add("x", np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4 * 640, np.float32))
    with pytest.raises(ValueError, match="not a clip shard folder"):
        ClipStore(tmp_path / "nothing")


def test_bundled_demo_vae_keeps_the_face_deep_into_a_stream(demo_run):
    """Deep into a stream (seconds 4-8 of an 8 s held-out clip, past the decoder's ~80-frame receptive field) the face
    keeps its colours: face-box PSNR >= 15 dB. A decoder trained without a stream's past (`train vae --context-frames`)
    turns the face into a wrong-coloured blur there (~12.7 dB); the shipped model ~16 dB, ~19 dB in the first
    second."""
    from portrait_rt.data.synthetic import render_clip
    from portrait_rt.eval.model_report import masked_psnr, vae_reconstruct

    pipe, _, _ = demo_run
    clip = render_clip(5, resolution=pipe.resolution, duration=8.0, split="eval")
    recon = vae_reconstruct(pipe.vae, clip.frames)
    x0, y0, x1, y1 = clip.meta["face_box"][0].astype(int)
    face = np.zeros((pipe.resolution, pipe.resolution), bool)
    face[y0:y1, x0:x1] = True
    assert masked_psnr(recon[100:], clip.frames[100 : len(recon)], face) >= 15.0


def test_report_fills_the_model_cards_table(demo_run, tmp_path):
    """`python -m portrait_rt eval report` on the bundled model (one held-out clip): every row of the card's table,
    the contact sheet, the sharp ceiling (the same clip with another head motion: below the ground truth against
    itself, MAX_PSNR, and, since frame 0 is shared, above 10 dB), and the CFG sweep's mouth amplitude within 0.6-1.4
    of the ground truth's (the shipped model ~0.87; a model that stops opening the mouth fails the floor)."""
    from portrait_rt.eval.model_report import CFG_SETTINGS, evaluate_model
    from portrait_rt.training.export import metrics_table

    pipe, _, _ = demo_run
    report = evaluate_model(pipe, num_clips=1, duration=2.0, cfg=True, sheet_path=tmp_path / "sheet.png")
    table = metrics_table(report)
    for label in (
        "detail kept, generated",
        "VAE reconstruction PSNR",
        "ceiling for a sharp generator",
        "lip-sync r,",
        "lambda_a 1 -> 2 raises the mouth's amplitude",
        "CFG la=2,lr=2: lip-sync r / mouth amplitude",
    ):
        assert label in table
    assert 10.0 < report["sharp_ceiling_psnr"] < 60.0
    assert len(report["cfg"]) == len(CFG_SETTINGS)
    assert all(0.6 < v["mouth_amplitude"] < 1.4 for v in report["cfg"].values())
    assert Image.open(tmp_path / "sheet.png").size[0] > pipe.resolution
