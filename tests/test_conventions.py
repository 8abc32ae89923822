"""diffusers' conventions on `__call__` and on the models, on the tiny preset: `output_type`, `return_dict`,
`callback_on_step_end` (+ `interrupt`), `latents`, the VAE's typed outputs, `set_attention_backend`, A/V export."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from portrait_rt.constants import FPS, SAMPLE_RATE
from portrait_rt.images import frames_to_tensor, load_reference_images, tensor_to_frames
from portrait_rt.pipeline import PortraitRTPipeline, PortraitRTPipelineOutput

from .conftest import perturb_, speech_like

STEPS = 1


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def clip():
    return speech_like(0.9), SAMPLE_RATE  # 23 frames: blocks of 5, 8, 8 and a last one of 2 (tiny: k = 2)


@pytest.fixture(scope="module")
def reference_np(tiny_pipe, portraits, clip):
    """The default output (uint8 frames), against which every other form is checked."""
    return tiny_pipe(portraits[:1], clip, num_inference_steps=STEPS, generator=_gen())


def test_output_types_are_one_video_in_four_forms(tiny_pipe, portraits, clip, reference_np):
    """ "pil" and "pt" go through diffusers' `VideoProcessor` from the decoder's float output, so they may round one
    level apart from the uint8 "np" frames (never more); "latent" is what the decoder turned into those frames."""
    frames = reference_np.frames
    assert frames.dtype == np.uint8 and frames.shape == (23, 64, 64, 3)
    kw = {"num_inference_steps": STEPS}
    pil = tiny_pipe(portraits[:1], clip, generator=_gen(), output_type="pil", **kw).frames
    assert isinstance(pil, list) and len(pil) == 23 and all(isinstance(f, Image.Image) for f in pil)
    assert pil[0].size == (64, 64) and pil[0].mode == "RGB"
    assert np.abs(np.stack([np.asarray(f) for f in pil]).astype(int) - frames).max() <= 1
    pt = tiny_pipe(portraits[:1], clip, generator=_gen(), output_type="pt", **kw).frames
    assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float32 and pt.shape == (23, 3, 64, 64)
    assert 0 <= pt.min() and pt.max() <= 1
    assert (pt.permute(0, 2, 3, 1).numpy() * 255 - frames).__abs__().max() <= 0.5 + 1e-3  # frames = round(pt * 255)

    out = tiny_pipe(portraits[:1], clip, generator=_gen(), output_type="latent", **kw)
    latents = out.frames
    assert latents.shape == (1, 64, 8, 1, 1)  # 4 blocks of k = 2 latent frames, normalised as G sees them
    vae = tiny_pipe.vae
    refs = frames_to_tensor(load_reference_images(portraits[:1], 64))[None]  # (1, M, 3, H, W), as the pipeline loads
    f_c, _ = vae.encode_reference(refs)
    z = latents / vae.config.scaling_factor + vae.config.shift_factor
    decoded = vae.decode(z, f_c).sample[0, :, :23]  # one-shot decode of the whole latent video: (3, T, H, W)
    assert np.abs(tensor_to_frames(decoded.transpose(0, 1)).astype(int) - frames).max() <= 1
    np.testing.assert_array_equal(out.audio, reference_np.audio)

    with pytest.raises(ValueError, match="output_type='mp4'.*'latent'"):
        tiny_pipe(portraits[:1], clip, output_type="mp4", **kw)


def test_return_dict_false_is_the_tuple(tiny_pipe, portraits, clip, reference_np):
    out = tiny_pipe(portraits[:1], clip, num_inference_steps=STEPS, generator=_gen(), return_dict=False)
    assert isinstance(out, tuple) and not isinstance(reference_np, tuple)
    assert isinstance(reference_np, PortraitRTPipelineOutput)
    frames, audio = out
    np.testing.assert_array_equal(frames, reference_np.frames)
    np.testing.assert_array_equal(audio, reference_np.audio)


def test_latents_are_the_first_blocks_noise(tiny_pipe, portraits, clip, reference_np):
    """The noise a generator draws block by block, given as `latents`, gives that generator's frames; given for the
    first block only, the generator (already past that block) draws the rest: the same frames again."""
    shape = (1, 64, 2, 1, 1)  # one block of the tiny preset: (1, C, k, h, w)
    g = _gen()
    noise = torch.cat([randn_tensor(shape, generator=g) for _ in range(4)], dim=2)  # (1, C, 4 k, h, w)
    kw = {"num_inference_steps": STEPS}
    np.testing.assert_array_equal(tiny_pipe(portraits[:1], clip, latents=noise, **kw).frames, reference_np.frames)
    g = _gen()
    first = randn_tensor(shape, generator=g)
    out = tiny_pipe(portraits[:1], clip, latents=first, generator=g, **kw).frames
    np.testing.assert_array_equal(out, reference_np.frames)
    other = tiny_pipe(portraits[:1], clip, latents=torch.zeros(shape), generator=_gen(9), **kw).frames
    assert np.abs(other[:5].astype(int) - reference_np.frames[:5]).max() > 0  # the first block's noise is used
    for bad, words in [(torch.zeros(1, 64, 3, 1, 1), "multiple of block_size=2"), (torch.zeros(1, 8, 2, 1, 1), "64")]:
        with pytest.raises(ValueError, match=words):
            tiny_pipe(portraits[:1], clip, latents=bad, **kw)


def test_callback_on_step_end_sees_every_step_and_can_change_and_interrupt(tiny_pipe, portraits, clip, reference_np):
    """The callback runs after each Euler step of each block with the tensors asked for; what it returns replaces
    them; `pipe._interrupt = True` ends the call after the current block."""
    assert PortraitRTPipeline._callback_tensor_inputs == ["latents", "audio_features"]
    calls = []

    def record(pipe, step, t, kwargs):
        calls.append((step, float(t), sorted(kwargs), kwargs["latents"].shape))
        return kwargs

    out = tiny_pipe(
        portraits[:1],
        clip,
        num_inference_steps=2,
        generator=_gen(),
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["latents", "audio_features"],
    )
    assert [c[0] for c in calls] == [0, 1] * 4 and calls[0][1] > calls[1][1]  # 4 blocks x 2 steps; t falls
    assert calls[0][2] == ["audio_features", "latents"] and calls[0][3] == (1, 64, 2, 1, 1)
    plain = tiny_pipe(portraits[:1], clip, num_inference_steps=2, generator=_gen()).frames
    np.testing.assert_array_equal(out.frames, plain)  # returning the tensors unchanged changes nothing

    def zero(pipe, step, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])}

    zeroed = tiny_pipe(portraits[:1], clip, num_inference_steps=2, generator=_gen(), callback_on_step_end=zero)
    assert np.abs(zeroed.frames.astype(int) - plain).max() > 0

    def stop(pipe, step, t, kwargs):
        pipe._interrupt = True
        return {}

    kw = {"num_inference_steps": STEPS, "generator": _gen()}
    cut = tiny_pipe(portraits[:1], clip, callback_on_step_end=stop, **kw)
    assert tiny_pipe.interrupt and len(cut.timings) == 1
    np.testing.assert_array_equal(cut.frames, reference_np.frames[:5])  # the first block, whole
    again = tiny_pipe(portraits[:1], clip, callback_on_step_end=record, num_inference_steps=STEPS, generator=_gen())
    assert not tiny_pipe.interrupt and again.frames.shape == reference_np.frames.shape  # reset per call
    with pytest.raises(ValueError, match="noise_pred"):
        tiny_pipe(portraits[:1], clip, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["noise_pred"])


def test_vae_outputs_are_typed_as_autoencoder_kl(tiny_pipe):
    """`encode` -> `.latent_dist`, `decode` -> `.sample` (`return_dict=False`: tuples), as diffusers'
    `AutoencoderKL`; the streaming `decode_chunk` (caches as values) is unchanged and agrees with them."""
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput

    vae = tiny_pipe.vae
    video = torch.rand(1, 3, 9, 64, 64, generator=_gen()) * 2 - 1
    with torch.no_grad():
        encoded = vae.encode(video)
        assert isinstance(encoded, AutoencoderKLOutput) and isinstance(
            encoded.latent_dist, DiagonalGaussianDistribution
        )
        (posterior,) = vae.encode(video, return_dict=False)
        z = encoded.latent_dist.mode()
        assert z.shape == (1, 64, 3, 1, 1) and torch.equal(z, posterior.mode())
        decoded = vae.decode(z)
        assert isinstance(decoded, DecoderOutput) and decoded.sample.shape == (1, 3, 9, 64, 64)
        (sample,) = vae.decode(z, return_dict=False)
        assert torch.equal(sample, decoded.sample)
        first, cache = vae.decode_chunk(z[:, :, :1])  # the stream's path: chunk by chunk, its caches carried
        rest, _ = vae.decode_chunk(z[:, :, 1:], cache=cache)
        torch.testing.assert_close(torch.cat([first, rest], dim=2), decoded.sample, atol=1e-5, rtol=0)


CPU_BACKENDS = ["native", "_native_math", "_native_flash", "flex"]  # the others need CUDA or a package (below)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # flex says it runs unfused
def test_attention_backends_that_run_on_cpu_agree(portraits, clip):
    """`set_attention_backend` on both models reaches every attention processor (the DiT's and the VAE's Dref),
    and each backend this CPU runs gives the frames of the default within one uint8 level. The rest of diffusers'
    backends refuse here with what they need (flash-attn, sage, xformers, `kernels`, CUDA)."""
    torch.manual_seed(0)
    pipe = PortraitRTPipeline.from_preset("tiny")  # its own: the backend is module state
    perturb_(pipe.transformer)
    perturb_(pipe.vae, std=0.02)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(portraits[:1], clip, num_inference_steps=STEPS, generator=_gen()).frames.astype(int)

    def processors():
        return [
            m.processor for model in (pipe.transformer, pipe.vae) for m in model.modules() if hasattr(m, "processor")
        ]

    assert {type(p).__name__ for p in processors()} == {"FlowDiTAttnProcessor", "DrefAttnProcessor"}
    base = run()
    for backend in CPU_BACKENDS:
        pipe.transformer.set_attention_backend(backend)
        pipe.vae.set_attention_backend(backend)
        assert {p._attention_backend for p in processors()} == {AttentionBackendName(backend)}
        frames = run()
        assert np.abs(frames - base).max() <= 1, backend
    for backend in ("_native_efficient", "xformers"):  # refused when set (a missing package) or when run (no kernel)
        with pytest.raises(RuntimeError):
            pipe.transformer.set_attention_backend(backend)
            run()
    pipe.transformer.set_attention_backend("native")
    pipe.vae.set_attention_backend("native")
    np.testing.assert_array_equal(run(), base)


def test_output_exports_with_diffusers_encode_video(tiny_pipe, portraits, clip, reference_np, tmp_path):
    """A user's one-off export of `__call__`'s output with diffusers' `encode_video` (PyAV): h.264 + AAC, every
    frame, the audio's length. The library's own writers (`portrait_rt.video`) stay on ffmpeg: see its docstring."""
    pytest.importorskip("av")
    from diffusers.utils.export_utils import encode_video

    from portrait_rt.video import probe, read_video

    path = tmp_path / "out.mp4"
    out = reference_np
    audio = torch.from_numpy(out.audio)
    encode_video(torch.from_numpy(out.frames), FPS, str(path), audio=audio, audio_sample_rate=out.sample_rate)
    meta = probe(path)
    assert meta["codec"] == "h264" and meta["audio_codec"] == "aac" and meta["fps"] == FPS
    frames, samples, rate = read_video(path)
    assert len(frames) == len(out.frames) and abs(samples.size / rate - out.audio.size / out.sample_rate) < 0.05


def test_pt_and_pil_of_a_pasted_back_photo_are_its_frames(tiny_pipe, clip):
    """With `paste_back` the frames are the photo (uint8): "pt" and "pil" convert those, not the model's crop."""
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    kw = {"num_inference_steps": STEPS}
    frames = tiny_pipe([photo], clip, generator=_gen(), **kw).frames
    assert frames.shape == (23, 600, 512, 3)  # the photo's size: pasted back
    pt = tiny_pipe([photo], clip, generator=_gen(), output_type="pt", **kw).frames
    assert pt.shape == (23, 3, 600, 512)
    assert np.abs(pt.permute(0, 2, 3, 1).numpy() * 255 - frames).max() < 1e-3
    pil = tiny_pipe([photo], clip, generator=_gen(), output_type="pil", **kw).frames
    np.testing.assert_array_equal(np.stack([np.asarray(f) for f in pil]), frames)
