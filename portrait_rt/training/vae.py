"""VAE training (paper §3.1 eq. (2), supplementary "Training details of the causal video VAE").

Loss: L1 reconstruction + a small KL term on the posterior, plus `--lpips-weight` x LPIPS (eq. (2)) when the user
has the LPIPS weights locally (`--lpips-backbone`, `--lpips-heads`: see `portrait_rt.training.lpips`; nothing is
downloaded, so the default is off). References: M random frames of the same clip decoded through Dref, M = 1..3
as in the paper, plus M = 0 in `no_reference_prob` of the steps so the M = 0..3 comparison of Table 2 is measured on
one model.
Progressive clip length: `stages` such as "5x8:1200,17x4:400" train 1200 steps on 5-frame clips (batch 8), then
400 on 17-frame clips (batch 4), as the paper goes 5 -> 17 -> 73 frames. Do not stop at 5: the causal
convolutions only learn to use a past they have seen, and a VAE trained on 5-frame clips loses detail (the demo's
mouth) on long clips, which is what the DiT's cached latents and the stream are. `--no-crva` trains the Table 2
"w/o CR-VA" ablation.

At the end the trainer encodes clips with the EMA weights and sets `shift_factor` / `scaling_factor` in the VAE
config from the latents' mean and std, so the DiT sees roughly unit-variance latents: `(z - shift) * scale`.

Mouth losses for the synthetic corpus (not in the paper; for CPU budgets). The mouth interior is under 1% of the pixels
and a 64x-compressed latent learns to carry it only after very many plain-L1 steps (the per-pixel median of a mouth
that is mostly closed is a closed mouth), so the lip-sync the DiT can reach stays at zero for a long time.
- `--mouth-weight W`: the L1 of the pixels in and around the mouth interior (the corpus's reserved colour, found in
  the target and in the reconstruction, dilated by 3 px) counts 1 + W times.
- `--mouth-probe-weight P`: a linear probe from the posterior mean to each frame's mouth-interior area, trained
  with the VAE (MSE, weight P; its gradient reaches the encoder) and discarded afterwards: it makes the latent carry
  the mouth opening linearly, which the decoder and the DiT then use.
- `--mouth-sync-weight S`: the L1 between each frame's mouth-interior area in the reconstruction and in the target
  (through the soft colour key, so it is differentiable), weight S: a per-frame opening the decoder shows a frame late
  costs the whole change of opening, where the pixel L1 of a blurred mouth costs little. It moves pixels already near
  the interior's colour: a mouth the decoder leaves shut gets no pull from it (`--mouth-weight` gives that). Demo v5:
  the decoded mouth lagged the target by half a frame on average (the first and last frames of a latent group were
  nearer the previous frame's opening than their own), and the generated video inherits the lag.
In videos without the reserved colour they reduce to the plain loss (the probe then learns that the area is 0).

Sharpness (`--gradient-weight G`, not in the paper): the L1 of the image gradients counts G times; an edge the
reconstruction blurs costs on both sides of it. The demo's reference-warp stage used G = 1 (see scripts/train_demo.sh).

Adversarial term (`--adversarial-weight A`, not in the paper; most video VAEs train with one): a small patch
discriminator (`PatchDiscriminator`) scores 38 x 38 px patches of single frames, and the reconstruction's hinge
generator loss counts A times. Without the right flow the warp cannot place the references' sharp pixels where a
moved head is, and L1 then prefers the decoder's blur (the average of where the head may be): the extra decoder
steps of demo v6 lost detail that way. The discriminator lives in the training module and trains with the same
optimizer on the hinge loss, its gradient kept apart from the decoder's: it sees the reconstruction detached, and
the generator term sees it through detached weights. It is discarded with the module, like the mouth probe.

Reference flow (`--flow-weight F`, not in the paper; VAEs with the reference warp): the warp's flow learns little
from the pixel loss alone (a bilinear warp's gradient sees about a pixel, and the head moves several), so the head
keeps the reference's pose. Each step, OpenCV's Farneback optical flow from every target frame to every reference
(where the reference's pixel for each target pixel is, found on the ground truth: a teacher) supervises the head's
flow with an L1 weighted F, where the reference warped by it matches the target (mouths that changed and uncovered
background are left out). Measured on the demo VAE: the teacher's warp matches the target at 30 dB, but the H/4 head
did not learn it (the pre-warp frame it looks at is blurred, and the motion is under one of its cells; the model card
has the figures). Needs opencv (`pip install 'portrait-rt[train]'`).

Stream context (`--context-frames C`, a multiple of 4; not in the paper): each step draws k from 0 to C/4, takes a
window 4k frames longer than the stage's, and decodes its first k latent frames without gradient, only to fill the
causal decoder's cache (`CausalVideoVAE.forward(context_latents=k)`); the loss is on the frames after them. The
decoder's receptive field spans ~80 frames in the demo preset: trained on 17- and 33-frame windows only, every frame
it learnt from had the stream's start in view, and deep into a stream some faces drifted to the wrong colours.

Growing a trained VAE: `--init-from FOLDER --config-json '{"ref_warp_channels": 32}'` builds the VAE with the changed
config and loads every trained weight into it; only new modules (the reference warp) start from their own
initialisation. A change that would drop or reshape trained weights is refused.

Decoder fine-tuning (`--freeze-encoder`): E1 and E2 stay fixed and only D1, Dref and D2 train, as Stable
Diffusion's VAE decoders were fine-tuned: the latent space does not move, so latents cached for the DiT stay valid
and the DiT can train on them while the decoder improves.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from portrait_rt.constants import MAX_REFERENCES, usable_video_frames, video_frames_for_latents
from portrait_rt.data.shards import ClipStore
from portrait_rt.images import frames_to_tensor
from portrait_rt.models.vae import CausalVideoVAE
from portrait_rt.mouth import KEY_CHANNEL_WEIGHTS, MOUTH_INTERIOR_RGB, key_membership
from portrait_rt.presets import get_preset
from portrait_rt.training.common import (
    TrainConfig,
    Trainer,
    add_common_arguments,
    add_dataclass_arguments,
    config_from_args,
    dataclass_from_args,
    option,
)
from portrait_rt.training.lpips import LPIPS

logger = logging.getLogger(__name__)


def parse_stages(text: str) -> list[tuple[int, int, int]]:
    """ "5x8:1200,17x4:400" -> [(frames 5, batch 8, steps 1200), (17, 4, 400)]."""
    stages = []
    for part in text.split(","):
        try:
            shape, steps = part.split(":")
            frames, batch = (int(v) for v in shape.split("x"))
            stages.append((frames, batch, int(steps)))
        except ValueError:
            raise ValueError(f"--stages {text!r}: write FRAMESxBATCH:STEPS,... e.g. 5x8:1200,17x4:400") from None
        if (frames - 1) % 4 or batch < 1 or int(steps) < 1:
            raise ValueError(f"--stages {part!r}: frames must be 1 + 4n (5, 17, ...), batch and steps >= 1.")
    return stages


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(0, 1)), averaged over latent elements."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()


def mouth_membership(video: torch.Tensor) -> torch.Tensor:
    """Soft membership (B, 1, T, H, W) in [0, 1] of each pixel of `video` (B, 3, T, H, W) in [-1, 1] in the mouth
    interior, keyed as the metrics key it (`portrait_rt.mouth`: `key_distance`, `key_membership`); differentiable."""
    key = torch.tensor(MOUTH_INTERIOR_RGB, dtype=torch.float32, device=video.device).view(1, 3, 1, 1, 1)
    weights = torch.tensor(KEY_CHANNEL_WEIGHTS, device=key.device).view(1, 3, 1, 1, 1)
    distance = ((((video.float() + 1) * 127.5 - key) * weights).square().sum(1, keepdim=True) + 1e-6).sqrt()
    return key_membership(distance)


@torch.no_grad()
def mouth_region(*videos: torch.Tensor, dilate: int = 3) -> torch.Tensor:
    """Soft mask (B, 1, T, H, W) of the mouth interior in any of `videos`, dilated by `dilate` px."""
    k = 2 * dilate + 1
    masks = torch.stack([mouth_membership(v) for v in videos]).amax(0)
    return F.max_pool3d(masks, (1, k, k), stride=1, padding=(0, dilate, dilate))


MOUTH_AREA_SCALE = 0.004  # the mouth interior's share of the frame when wide open (~0.6%) maps to ~1.5


def mouth_area(video: torch.Tensor) -> torch.Tensor:
    """Per-frame mouth-interior area (B, T) of `video` (B, 3, T, H, W): its share of the frame / `MOUTH_AREA_SCALE`."""
    return mouth_membership(video).mean(dim=(1, 3, 4)) / MOUTH_AREA_SCALE


def image_gradient_l1(recon: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical pixel differences of `recon` and `video` (B, 3, T, H, W): a sharpness
    term (an edge the reconstruction blurs costs twice, once per side)."""
    dx = (recon.diff(dim=-1) - video.diff(dim=-1)).abs().mean()
    dy = (recon.diff(dim=-2) - video.diff(dim=-2)).abs().mean()
    return dx + dy


FLOW_MATCH_TOLERANCE = 20  # of 255: a target pixel whose flow-warped reference pixel is further off has no flow target


def reference_flow(video: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optical flow from each frame of `video` (T, H, W, 3) uint8 to each of `references` (M, H, W, 3) uint8: for
    every target pixel, where (in pixels, x then y) the same point is in the reference. -> flow (T, M, 2, H, W) and
    `valid` (T, M, 1, H, W), 1 where the reference warped by the flow matches the target (`FLOW_MATCH_TOLERANCE`)."""
    try:
        import cv2
    except ImportError:
        raise ImportError("--flow-weight needs OpenCV: pip install 'portrait-rt[train]'.") from None
    t, height, width, _ = video.shape
    grid = np.stack(np.meshgrid(np.arange(width), np.arange(height)), axis=-1).astype(np.float32)  # (H, W, 2)
    grey = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in (*video, *references)]
    flow = np.zeros((t, len(references), 2, height, width), np.float32)
    valid = np.zeros((t, len(references), 1, height, width), np.float32)
    for i in range(t):
        for j, reference in enumerate(references):
            f = cv2.calcOpticalFlowFarneback(grey[i], grey[t + j], None, 0.5, 2, 11, 2, 5, 1.1, 0)
            at = grid + f
            warped = cv2.remap(reference, at[..., 0], at[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            error = np.abs(warped.astype(np.int16) - video[i]).max(axis=-1)
            flow[i, j], valid[i, j, 0] = f.transpose(2, 0, 1), error < FLOW_MATCH_TOLERANCE
    return flow, valid


class PatchDiscriminator(nn.Module):
    """A small PatchGAN on single frames: (N, 3, H, W) in [-1, 1] -> (N, 1, H/8, W/8) realness logits, one per
    38 x 38 px patch (three 4 x 4 convolutions of stride 2, then a 3 x 3)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        layers, width = [], 3
        for i, out in enumerate((channels, 2 * channels, 4 * channels)):
            layers += [nn.Conv2d(width, out, 4, stride=2, padding=1)]
            layers += [nn.GroupNorm(8, out)] if i else []
            layers += [nn.LeakyReLU(0.2)]
            width = out
        self.net = nn.Sequential(*layers, nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)


def adversarial_losses(
    discriminator: PatchDiscriminator, recon: torch.Tensor, video: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge losses on the frames of `recon` and `video` (B, 3, T, H, W) -> (generator, discriminator). Each reaches
    one side only: the generator loss flows into `recon` through detached discriminator weights, the discriminator
    loss into the discriminator through a detached `recon`."""
    fake, real = (v.float().movedim(2, 1).flatten(0, 1) for v in (recon, video))  # (B*T, 3, H, W)
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    generator = -torch.func.functional_call(discriminator, frozen, (fake,)).mean()
    critic = F.relu(1 - discriminator(real)).mean() + F.relu(1 + discriminator(fake.detach())).mean()
    return generator, critic


@dataclass
class VAELossWeights:
    """The weight of each term of the VAE's loss beside the L1 (flags `--kl-weight`, `--mouth-weight`, ...; the
    module docstring says what each term does). Every weight is >= 0; 0 leaves the term out."""

    kl: float = option(1e-4, "weight of the mean KL term")
    mouth: float = option(0.0, "extra L1 weight on the mouth interior and its surround (synthetic corpus)")
    mouth_probe: float = option(0.0, "weight of a linear latent -> mouth-area probe loss (synthetic corpus)")
    mouth_sync: float = option(0.0, "weight of the L1 between per-frame mouth-interior areas of recon and target")
    lpips: float = option(0.0, "weight of LPIPS (eq. (2)); needs --lpips-backbone and --lpips-heads")
    gradient: float = option(0.0, "weight of the image-gradient L1 (a sharpness term)")
    adversarial: float = option(0.0, "weight of a patch discriminator's hinge loss")
    flow: float = option(0.0, "weight of the reference warp's flow L1 against OpenCV optical flow (needs opencv)")

    def __post_init__(self):
        if negative := [f"--{f.name.replace('_', '-')}-weight {getattr(self, f.name)}" for f in fields(self)
                        if getattr(self, f.name) < 0]:  # fmt: skip
            raise ValueError(f"{', '.join(negative)}: loss weights must be >= 0.")


class VAETrainingModule(nn.Module):
    """The VAE and its loss in one module, so `accelerate` (DDP, autocast) wraps a single forward."""

    def __init__(
        self,
        vae: CausalVideoVAE,
        weights: VAELossWeights | None = None,
        sample_posterior: bool = True,
        lpips: LPIPS | None = None,
    ):
        super().__init__()
        self.vae, self.sample_posterior = vae, sample_posterior
        self.weights = weights = weights or VAELossWeights()
        self.discriminator = PatchDiscriminator() if weights.adversarial > 0 else None
        if weights.flow > 0 and vae.reference_warp is None:
            raise ValueError("--flow-weight trains the reference warp; this VAE has none (set ref_warp_channels).")
        # 4 outputs per latent frame: the areas of its 4 video frames (the first latent frame: frame 0, 4 times).
        self.mouth_probe = nn.Conv3d(vae.config.latent_channels, 4, 1) if weights.mouth_probe > 0 else None
        # A plain tuple, not a submodule: the frozen LPIPS stays out of state_dict, checkpoints, EMA and the VAE.
        self._lpips = (lpips,) if lpips is not None else ()

    def forward(
        self,
        video: torch.Tensor,
        references: torch.Tensor,
        generator: torch.Generator,
        flow: torch.Tensor | None = None,
        flow_valid: torch.Tensor | None = None,
        context_latents: int = 0,
    ):
        """video (B, 3, 1+4n, H, W), references (B, M, 3, H, W) in [-1, 1] -> (loss, logs). With `weights.flow`:
        the `reference_flow` targets `flow` (B, T, M, 2, H, W) and `flow_valid` (B, T, M, 1, H, W) of the T frames
        reconstructed (those after the context).
        `context_latents`: see `CausalVideoVAE.forward`; the loss is on the frames decoded after the context."""
        head_outputs = []  # the warp head's (flow / downscale, logit) at H/4, one tensor per decode
        hook = None
        if self.weights.flow > 0:
            hook = self.vae.reference_warp.head.register_forward_hook(lambda m, i, out: head_outputs.append(out))
        try:
            recon, posterior = self.vae(
                video, references, self.sample_posterior, generator, context_latents=context_latents
            )
        finally:
            if hook is not None:
                hook.remove()
        full_video, video = video, video[:, :, video.shape[2] - recon.shape[2] :]  # the frames after the context
        error = (recon.float() - video).abs()
        l1 = error.mean()
        logs = {"l1": l1.detach()}
        if self.weights.mouth > 0:
            mouth = mouth_region(video, recon)
            logs["mouth_l1"] = (error * mouth).detach().sum() / (3 * mouth.sum()).clamp_min(1.0)
            l1 = l1 + self.weights.mouth * (error * mouth).mean()
        if self.weights.mouth_sync > 0:
            sync = (mouth_area(recon.float()) - mouth_area(video)).abs().mean()
            logs["mouth_sync"] = sync.detach()
            l1 = l1 + self.weights.mouth_sync * sync
        if self.weights.gradient > 0:
            grad = image_gradient_l1(recon.float(), video)
            logs["gradient_l1"] = grad.detach()
            l1 = l1 + self.weights.gradient * grad
        if self.discriminator is not None:
            generator_loss, critic_loss = adversarial_losses(self.discriminator, recon, video)
            logs["adversarial"], logs["discriminator"] = generator_loss.detach(), critic_loss.detach()
            l1 = l1 + self.weights.adversarial * generator_loss + critic_loss
        if head_outputs:  # (B*T*M, 3, H/4, W/4), flattened as the head's inputs: batch, frame, reference
            d = self.vae.reference_warp.downscale
            predicted = head_outputs[-1][:, :2].float() * d  # the last decode: the frames after the context
            target = F.avg_pool2d(flow.flatten(0, 2), d)
            weight = F.avg_pool2d(flow_valid.flatten(0, 2), d).eq(1).float()  # every pixel of the cell matches
            flow_l1 = ((predicted - target).abs() * weight).sum() / (2 * weight.sum()).clamp_min(1.0)
            logs["flow_l1"] = flow_l1.detach()
            l1 = l1 + self.weights.flow * flow_l1
        if self.mouth_probe is not None:
            area = mouth_area(full_video)  # (B, 1 + 4n): the probe reads every latent frame
            area = torch.cat([area[:, :1].expand(-1, 3), area], dim=1).unflatten(1, (-1, 4))  # (B, n + 1, 4)
            predicted = self.mouth_probe(posterior.mean.float()).sum(dim=(3, 4)).transpose(1, 2)  # (B, n + 1, 4)
            probe = F.mse_loss(predicted, area)
            logs["mouth_probe"] = probe.detach()
            l1 = l1 + self.weights.mouth_probe * probe
        if self._lpips and self.weights.lpips > 0:
            frames = [v.float().movedim(2, 1).flatten(0, 1) for v in (recon, video)]  # (B*T, 3, H, W) each
            lpips = self._lpips[0](*frames).mean()
            l1 = l1 + self.weights.lpips * lpips
            logs["lpips"] = lpips.detach()
        kl = kl_divergence(posterior.mean.float(), posterior.logvar.float())
        with torch.no_grad():
            mse = ((recon.float().clamp(-1, 1) - video) / 2).square().mean()
            logs["psnr"] = -10 * torch.log10(mse.clamp_min(1e-10))
        return l1 + self.weights.kl * kl, {**logs, "kl": kl.detach()}


class VAETrainer(Trainer):
    """Trains `CausalVideoVAE` on a clip shard store (`python -m portrait_rt train vae`)."""

    def __init__(
        self,
        config: TrainConfig,
        data: str,
        preset: str = "demo",
        stages: list[tuple[int, int, int]] | None = None,
        weights: VAELossWeights | None = None,
        no_reference_prob: float = 0.1,
        use_crva: bool = True,
        init_from: str | None = None,
        config_overrides: dict | None = None,
        sample_posterior: bool = True,
        freeze_encoder: bool = False,
        lpips_backbone: str | None = None,
        lpips_heads: str | None = None,
        context_frames: int = 0,
    ):
        if context_frames < 0 or context_frames % 4:
            raise ValueError(f"--context-frames must be a multiple of 4 (whole latent frames), got {context_frames}.")
        self.context_frames = context_frames
        self.weights = weights = weights or VAELossWeights()
        if weights.lpips > 0 and not (lpips_backbone and lpips_heads):
            raise ValueError(
                "--lpips-weight > 0 needs local LPIPS weights (nothing is downloaded): pass --lpips-backbone "
                "(torchvision's vgg16 ImageNet state dict, vgg16-397923af.pth) and --lpips-heads (the lpips "
                "package's weights/v0.1/vgg.pth), or leave --lpips-weight at 0."
            )
        self.lpips_backbone, self.lpips_heads = lpips_backbone, lpips_heads
        self.freeze_encoder = freeze_encoder
        self.store = ClipStore(data)
        self.config_overrides = config_overrides or {}
        self.sample_posterior = sample_posterior
        self.preset, self.no_reference_prob = preset, no_reference_prob
        self.use_crva, self.init_from = use_crva, init_from
        self.stages = stages or [(5, config.batch_size, config.max_steps)]
        config.max_steps = sum(s for _, _, s in self.stages)
        config.extra = {**config.extra, "stages": [list(s) for s in self.stages]}
        shortest = min(self.store.num_frames(i) for i in range(len(self.store)))
        if shortest < max(f for f, _, _ in self.stages) + context_frames:
            raise ValueError(f"Clips of {shortest} frames are shorter than the longest stage + --context-frames; "
                             "shorten --stages or --context-frames.")  # fmt: skip
        super().__init__(config)

    def build_module(self) -> nn.Module:
        if self.init_from:
            vae = CausalVideoVAE.from_pretrained(self.init_from)
            if self.config_overrides:  # grow a trained VAE: new modules start from their own initialisation
                config = {k: v for k, v in vae.config.items() if k != "_use_default_values"}  # else defaults win
                grown = CausalVideoVAE.from_config({**config, **self.config_overrides})
                missing, unexpected = grown.load_state_dict(vae.state_dict(), strict=False)
                if unexpected:
                    raise ValueError(f"--config-json changes trained modules of --init-from: {unexpected[:4]} ...")
                logger.info("grown from %s: %d new tensors (%s ...)", self.init_from, len(missing), missing[:3])
                vae = grown
        else:
            cfg = get_preset(self.preset)["vae"]
            cfg.update(resolution=self.store.resolution, use_crva=self.use_crva, **self.config_overrides)
            vae = CausalVideoVAE(**cfg)
        if vae.config.resolution != self.store.resolution:
            raise ValueError(f"VAE resolution {vae.config.resolution} != data resolution {self.store.resolution}.")
        if self.freeze_encoder:
            vae.encoder_1.requires_grad_(False)
            vae.encoder_2.requires_grad_(False)
        lpips = None
        if self.weights.lpips > 0:  # frozen and outside the module, so `prepare` does not move it: place it here
            lpips = LPIPS.from_files(self.lpips_backbone, self.lpips_heads).to(self.accelerator.device)
        return VAETrainingModule(vae, self.weights, self.sample_posterior, lpips)

    def stage(self, step: int) -> tuple[int, int]:
        """(frames, batch) of the progressive stage that `step` falls in."""
        for frames, batch, steps in self.stages:
            if step < steps:
                return frames, batch
            step -= steps
        return self.stages[-1][:2]

    def make_batch(self, step: int, micro: int, generator: torch.Generator) -> dict:
        num_frames, batch_size = self.stage(step)
        context = int(torch.randint(self.context_frames // 4 + 1, (1,), generator=generator))  # latent frames
        num_frames += 4 * context
        r = torch.rand(1, generator=generator).item()
        m = 0 if r < self.no_reference_prob else int(torch.randint(1, MAX_REFERENCES + 1, (1,), generator=generator))
        videos, refs, flows = [], [], []
        for _ in range(batch_size):
            k = int(torch.randint(len(self.store), (1,), generator=generator))
            frames, _ = self.store.load(k)
            start = int(torch.randint(frames.shape[0] - num_frames + 1, (1,), generator=generator))
            picks = sorted(torch.randint(frames.shape[0], (m,), generator=generator).tolist())
            videos.append(frames_to_tensor(frames[start : start + num_frames]).movedim(0, 1))  # (3, T, H, W)
            refs.append(frames_to_tensor(frames[picks]))  # (M, 3, H, W)
            if self.weights.flow > 0 and m > 0:
                past = start + video_frames_for_latents(context)  # the teacher only for the frames trained on
                flows.append(reference_flow(frames[past : start + num_frames], frames[picks]))
        device = self.accelerator.device
        batch = {"video": torch.stack(videos).to(device), "references": torch.stack(refs).to(device)}
        if flows:
            batch["flow"], batch["flow_valid"] = (torch.from_numpy(np.stack(f)).to(device) for f in zip(*flows))
        return {**batch, "generator": generator, "context_latents": context}

    def save_final(self, module: VAETrainingModule) -> None:
        vae = module.vae
        shift, scale = latent_statistics(vae, self.store)
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
        vae.save_pretrained(self.output_dir / "vae")
        (self.output_dir / "vae" / "latent_stats.json").write_text(
            json.dumps({"shift_factor": shift, "scaling_factor": scale}, indent=1)
        )
        logger.info("saved VAE to %s (shift %.4f, scale %.4f)", self.output_dir / "vae", shift, scale)


@torch.no_grad()
def latent_statistics(
    vae: CausalVideoVAE, store: ClipStore, num_clips: int = 32, num_frames: int = 17
) -> tuple[float, float]:
    """Mean and 1/std of posterior-mode latents over the first `num_frames` frames of up to `num_clips` clips."""
    vae.eval()
    zs = []
    for i in range(min(num_clips, len(store))):
        frames, _ = store.load(i)
        n = min(num_frames, usable_video_frames(frames.shape[0]))
        video = frames_to_tensor(frames[:n]).movedim(0, 1)[None].to(vae.device, vae.dtype)  # (1, 3, T, H, W)
        zs.append(vae.encode(video).latent_dist.mode().float().flatten())
    z = torch.cat(zs)
    return float(z.mean()), float(1.0 / z.std().clamp_min(1e-6))


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--data", required=True, help="clip shard folder (prepare / synthetic shards)")
    parser.add_argument("--preset", default="demo", help="VAE preset for a fresh model: tiny | demo | paper")
    parser.add_argument("--init-from", default=None, help="start from a saved VAE folder instead of the preset")
    parser.add_argument("--stages", default=None, help="progressive clip length, FRAMESxBATCH:STEPS,... e.g. "
                        "5x8:1200,17x4:400 (default: 5 frames, --batch-size, --max-steps)")  # fmt: skip
    parser.add_argument("--no-reference-prob", type=float, default=0.1, help="share of steps with M = 0 references")
    parser.add_argument("--no-crva", action="store_true", help="Table 2 ablation: interpolation without CR-VA")
    parser.add_argument(
        "--posterior-mean",
        action="store_true",
        help="decode the posterior mean instead of a sample (fast start on CPU budgets: at initialisation the "
        "posterior's unit variance drowns the latent; the KL term then only regularises the means)",
    )
    add_dataclass_arguments(parser, VAELossWeights, suffix="-weight")
    parser.add_argument(
        "--lpips-backbone", default=None, help="torchvision vgg16 ImageNet state dict (.pth), copied locally"
    )
    parser.add_argument("--lpips-heads", default=None, help="the lpips package's weights/v0.1/vgg.pth, copied locally")
    parser.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="train the decoder only (D1, Dref, D2): latents cached for the DiT stay valid (module docstring)",
    )
    parser.add_argument(
        "--context-frames",
        type=int,
        default=0,
        help="up to this many frames (a multiple of 4) of a stream's past decoded before each window (docstring)",
    )
    parser.add_argument("--config-json", default=None, help="JSON dict of VAE config values overriding the preset")


def build_trainer(args: argparse.Namespace) -> VAETrainer:
    stages = parse_stages(args.stages) if args.stages else None
    if stages is None and args.max_steps is None:
        raise ValueError("Give --max-steps or --stages.")
    config = config_from_args(args, args.max_steps or 0)
    return VAETrainer(
        config,
        args.data,
        preset=args.preset,
        stages=stages,
        weights=dataclass_from_args(VAELossWeights, args, suffix="-weight"),
        no_reference_prob=args.no_reference_prob,
        use_crva=not args.no_crva,
        init_from=args.init_from,
        config_overrides=json.loads(args.config_json) if args.config_json else None,
        sample_posterior=not args.posterior_mean,
        freeze_encoder=args.freeze_encoder,
        lpips_backbone=args.lpips_backbone,
        lpips_heads=args.lpips_heads,
        context_frames=args.context_frames,
    )
