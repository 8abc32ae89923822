"""CausalVideoVAE (tiny preset, CPU): shapes, causality, streaming == one-shot, references, save/load, sizes."""

from __future__ import annotations

import pytest
import torch

from portrait_rt.models.vae import CausalVideoVAE
from portrait_rt.presets import VAE_PRESETS

RES = VAE_PRESETS["tiny"]["resolution"]


@pytest.fixture(scope="module")
def vae() -> CausalVideoVAE:
    torch.manual_seed(0)
    return CausalVideoVAE(**VAE_PRESETS["tiny"]).eval()


def _video(frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, RES, RES, generator=g) * 2 - 1


def _latents(frames: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 64, frames, RES // 64, RES // 64, generator=g)


@torch.no_grad()
@pytest.mark.parametrize("frames", [1, 5, 17])
def test_shapes_and_compression(vae, frames):
    video = _video(frames, batch=2)
    posterior = vae.encode(video).latent_dist
    n = (frames - 1) // 4 + 1
    assert posterior.mean.shape == (2, 64, n, RES // 64, RES // 64)
    f_c, z_r = vae.encode_reference(_video(2, batch=2, seed=3).transpose(1, 2))  # 2 references
    assert f_c.shape == (2, 2, vae.reference_channels, RES // 16, RES // 16)
    assert z_r.shape == (2, 2, 64, RES // 64, RES // 64)
    out = vae.decode(posterior.mode(), f_c).sample
    assert out.shape == video.shape
    assert out.abs().max() <= 1
    recon, post = vae(video, video[:, :, :1].transpose(1, 2), generator=torch.Generator().manual_seed(0))
    assert recon.shape == video.shape and post.mean.shape == posterior.mean.shape


@torch.no_grad()
def test_image_alone_matches_first_frame(vae):
    """An image is a 1-frame video; by causality it encodes like the first frame of any video."""
    video = _video(9)
    z_img = vae.encode(video[:, :, :1]).latent_dist.mode()
    assert z_img.shape == (1, 64, 1, 1, 1)
    # Not bit-identical: the convolution kernels pick different blockings for different frame counts.
    assert (z_img - vae.encode(video).latent_dist.mode()[:, :, :1]).abs().max() <= 1e-5
    _, z_r = vae.encode_reference(video[:, :, :1].transpose(1, 2))
    assert torch.allclose(z_r[:, 0], z_img[:, :, 0], atol=1e-6)


@torch.no_grad()
def test_encoder_is_causal(vae):
    video = _video(17)
    perturbed = video.clone()
    perturbed[:, :, 9:] = -perturbed[:, :, 9:]  # frames >= 9 change: latent frames 0..2 see frames < 9 only
    a, b = vae.encode_chunk(video)[0], vae.encode_chunk(perturbed)[0]
    assert torch.equal(a[:, :, :3], b[:, :, :3])
    assert not torch.allclose(a[:, :, 3:], b[:, :, 3:])


@torch.no_grad()
def test_decoder_is_causal(vae):
    z = _latents(5)
    f_c = vae.encode_reference(_video(1).unsqueeze(1)[:, :, :, 0])[0]
    perturbed = z.clone()
    perturbed[:, :, 3:] += 1.0  # latent frames >= 3 change: output frames < 1 + 4*2 = 9 must not
    a, b = vae.decode(z, f_c).sample, vae.decode(perturbed, f_c).sample
    assert torch.equal(a[:, :, :9], b[:, :, :9])
    assert not torch.allclose(a[:, :, 9:], b[:, :, 9:])


@torch.no_grad()
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_streaming_decode_equals_one_shot(vae, chunk):
    z = _latents(7)
    f_c = vae.encode_reference(_video(2).transpose(1, 2))[0]
    whole = vae.decode(z, f_c).sample
    parts, cache = [], None
    for i in range(0, z.shape[2], chunk):
        frames, cache = vae.decode_chunk(z[:, :, i : i + chunk], f_c, cache)
        parts.append(frames)
        assert frames.shape[2] == (1 + 4 * (min(chunk, 7) - 1) if i == 0 else 4 * z[:, :, i : i + chunk].shape[2])
    assert (torch.cat(parts, dim=2) - whole).abs().max() <= 1e-5


def test_training_pass_with_a_stream_context(warp_vae):
    """`forward(context_latents=k)`: the first k latent frames only fill the decoder's cache (no gradient), so the
    output is the tail of the whole clip's decode, and the parameters learn from the tail alone."""
    vae = warp_vae
    video, refs = _video(17), _video(1).transpose(1, 2)  # 5 latent frames
    whole, _ = vae(video, refs, sample_posterior=False)
    tail, _ = vae(video, refs, sample_posterior=False, context_latents=2)
    assert tail.shape[2] == 17 - (4 * 2 - 3)
    assert (tail - whole[:, :, -tail.shape[2] :]).abs().max() <= 1e-5
    grad_enabled = []  # per decoder pass: the context's, then the tail's
    hook = vae.decoder_1.register_forward_pre_hook(lambda m, args: grad_enabled.append(torch.is_grad_enabled()))
    vae(video, refs, sample_posterior=False, context_latents=2)
    hook.remove()
    assert grad_enabled == [False, True]
    for k in (-1, 5):
        with pytest.raises(ValueError, match="context_latents"):
            vae(video, refs, sample_posterior=False, context_latents=k)


@torch.no_grad()
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_streaming_encode_equals_one_shot(vae, chunk):
    video = _video(25)
    whole = vae.encode_chunk(video)[0]
    parts, cache, start = [], None, 0
    while start < video.shape[2]:
        stop = start + (1 + 4 * (chunk - 1) if start == 0 else 4 * chunk)
        moments, cache = vae.encode_chunk(video[:, :, start:stop], cache)
        parts.append(moments)
        start = stop
    assert (torch.cat(parts, dim=2) - whole).abs().max() <= 1e-5


@torch.no_grad()
def test_references_matter_and_order_does_not(vae):
    z = _latents(3)
    images = _video(3).transpose(1, 2)  # (1, 3 refs, 3, H, W)
    f_c = vae.encode_reference(images)[0]
    outs = {m: vae.decode(z, f_c[:, :m]).sample for m in range(4)}
    assert all(out.shape == (1, 3, 9, RES, RES) for out in outs.values())
    assert not torch.allclose(outs[0], outs[1])
    assert not torch.allclose(outs[1], outs[2])
    other = vae.encode_reference(_video(1, seed=5).transpose(1, 2))[0]
    assert not torch.allclose(outs[1], vae.decode(z, other).sample)
    reordered = vae.decode(z, f_c[:, [2, 0, 1]]).sample
    assert (reordered - outs[3]).abs().max() <= 1e-5
    assert torch.equal(vae.decode(z, None).sample, outs[0])
    f_empty, z_empty = vae.encode_reference(images[:, :0])
    assert f_empty.shape[1] == 0 and z_empty.shape[1] == 0
    assert torch.equal(vae.decode(z, f_empty).sample, outs[0])


def test_bad_inputs_raise(vae):
    with pytest.raises(ValueError, match="1 \\+ 4n"):
        vae.encode(_video(4))
    with pytest.raises(ValueError, match="multiples of 64"):
        vae.encode(torch.zeros(1, 3, 1, 48, 64))
    with pytest.raises(ValueError, match="4n frames"):
        vae.encode_chunk(_video(3), cache=vae.encode_chunk(_video(1))[1])
    with pytest.raises(ValueError, match="f_c must be"):
        vae.decode(_latents(1), torch.zeros(1, 1, 5, 4, 4))


def test_gradients_checkpointing_and_bf16(vae):
    model = CausalVideoVAE(**VAE_PRESETS["tiny"])
    video = _video(5)
    refs = video[:, :, :1].transpose(1, 2)
    torch.manual_seed(0)
    recon, post = model(video, refs, sample_posterior=False)
    loss = (recon - video).abs().mean() + 1e-6 * post.kl().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    model.zero_grad()
    model.enable_gradient_checkpointing()
    recon_ckpt, post_ckpt = model(video, refs, sample_posterior=False)
    ((recon_ckpt - video).abs().mean() + 1e-6 * post_ckpt.kl().mean()).backward()
    assert torch.allclose(recon, recon_ckpt)
    assert torch.allclose(model.encoder_1[0].conv.weight.grad, grads["encoder_1.0.conv.weight"], atol=1e-6)
    with torch.no_grad():
        out = model.to(torch.bfloat16).decode(_latents(2).bfloat16()).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@torch.no_grad()
def test_without_crva_runs_and_differs():
    torch.manual_seed(0)
    baseline = CausalVideoVAE(**{**VAE_PRESETS["tiny"], "use_crva": False}).eval()
    video = _video(5)
    assert baseline.encode(video).latent_dist.mean.shape == (1, 64, 2, 1, 1)
    z = _latents(3)
    whole = baseline.decode(z).sample
    first, cache = baseline.decode_chunk(z[:, :, :1])
    rest, _ = baseline.decode_chunk(z[:, :, 1:], cache=cache)
    assert whole.shape == (1, 3, 9, RES, RES)
    assert (torch.cat([first, rest], dim=2) - whole).abs().max() <= 1e-5


@torch.no_grad()
def test_save_and_load_round_trip(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").exists()
    loaded = CausalVideoVAE.from_pretrained(tmp_path / "vae").eval()
    assert loaded.config.layers_per_block == vae.config.layers_per_block
    video = _video(5)
    f_c = vae.encode_reference(video[:, :, :1].transpose(1, 2))[0]
    z = vae.encode(video).latent_dist.mode()
    assert torch.equal(vae.decode(z, f_c).sample, loaded.decode(z, f_c).sample)
    assert torch.equal(z, loaded.encode(video).latent_dist.mode())


def test_paper_parameter_counts():
    with torch.device("meta"):
        paper = CausalVideoVAE(**VAE_PRESETS["paper"])

    def count(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    encoder = count(paper.encoder_1, paper.encoder_2)
    decoder = count(paper.decoder_1, paper.reference_decoder, paper.decoder_2)
    assert abs(encoder - 497e6) <= 0.1 * 497e6, encoder
    assert abs(decoder - 406e6) <= 0.1 * 406e6, decoder
    assert paper.config.resolution == 512 and paper.config.feature_channels == 1024
    assert len(paper.reference_decoder.blocks) == 6


@pytest.fixture(scope="module")
def warp_vae() -> CausalVideoVAE:
    """The tiny VAE (it has the reference warp) with the warp head's last conv no longer zero (as trained)."""
    torch.manual_seed(0)
    vae = CausalVideoVAE(**VAE_PRESETS["tiny"]).eval()
    torch.nn.init.normal_(vae.reference_warp.head[-1].weight, std=0.05)
    return vae


@torch.no_grad()
def test_reference_warp_streams_and_ignores_order(warp_vae):
    vae = warp_vae
    images = _video(3).transpose(1, 2)  # (1, 3 refs, 3, H, W)
    f_c = vae.encode_reference(images)[0]
    assert f_c.shape == (1, 3, vae.reference_channels, RES // 16, RES // 16)
    z = _latents(5)
    whole = vae.decode(z, f_c).sample
    parts, cache = [], None
    for i in range(z.shape[2]):
        frames, cache = vae.decode_chunk(z[:, :, i : i + 1], f_c, cache)
        parts.append(frames)
    assert (torch.cat(parts, dim=2) - whole).abs().max() <= 1e-5
    assert (vae.decode(z, f_c[:, [1, 2, 0]]).sample - whole).abs().max() <= 1e-5
    assert torch.equal(vae.decode(z, f_c[:, :0]).sample, vae.decode(z, None).sample)


@torch.no_grad()
def test_reference_warp_copies_reference_pixels():
    """With identity flow and a blend logit far above the decoded frame's, the output is the reference itself, pixel
    for pixel (the sharpness the warp exists for); the folded pixel patches unfold exactly."""
    torch.manual_seed(0)
    vae = CausalVideoVAE(**VAE_PRESETS["tiny"]).eval()
    torch.nn.init.constant_(vae.reference_warp.head[-1].bias[2], 30.0)  # blend logit 30: the reference wins
    image = _video(1).transpose(1, 2)  # (1, 1, 3, H, W)
    f_c = vae.encode_reference(image)[0]
    _, warp_inputs = vae._split_references(f_c)
    assert torch.equal(warp_inputs[0, 0, -48:], torch.nn.functional.pixel_unshuffle(image[0, 0], 4))
    out = vae.decode(_latents(2), f_c).sample  # (1, 3, 5, H, W)
    assert (out - image[:, 0, :, None]).abs().max() <= 1e-5


@torch.no_grad()
def test_reference_warp_moves_with_its_flow():
    """A constant predicted flow of +2 px in x samples the reference 2 px to the right."""
    torch.manual_seed(0)
    vae = CausalVideoVAE(**VAE_PRESETS["tiny"]).eval()
    bias = vae.reference_warp.head[-1].bias
    bias[0], bias[2] = 2.0 / vae.reference_warp.downscale, 30.0  # flow x = 2 px, the reference wins
    image = _video(1).transpose(1, 2)
    out = vae.decode(_latents(1), vae.encode_reference(image)[0]).sample  # (1, 3, 1, H, W)
    assert (out[0, :, 0, :, :-2] - image[0, 0, :, :, 2:]).abs().max() <= 1e-5


def test_paper_preset_has_no_reference_warp():
    with torch.device("meta"):
        assert CausalVideoVAE(**VAE_PRESETS["paper"]).reference_warp is None
