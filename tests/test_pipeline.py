import copy
import itertools

import numpy as np
import pytest
import torch

from portrait_rt.audio import AudioStreamBuffer
from portrait_rt.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from portrait_rt.images import tensor_to_frames
from portrait_rt.pipeline import PortraitRTPipeline, cfg_combine
from portrait_rt.streaming import StreamSettings

from .conftest import speech_like


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _chunks(x, rate, seed):
    """Random chunks of 1 ms to 2 s."""
    rng = np.random.default_rng(seed)
    i = 0
    while i < x.size:
        n = int(rng.integers(max(1, rate // 1000), 2 * rate))
        yield x[i : i + n], rate
        i += n


@pytest.mark.parametrize("rate", [16000, 22050, 44100, 48000])
def test_stream_equals_call(tiny_pipe, portraits, rate):
    # blocks of 2 latent frames, a KV window of 4 -> a window reset after every 2nd block; 6 blocks, 3 resets.
    x = speech_like(1.65, rate, seed=rate)
    kw = {"num_inference_steps": 2, "kv_window": 4, "generator": _gen(3)}
    out = tiny_pipe(portraits[:2], (x, rate), **kw)
    kw["generator"] = _gen(3)
    streamed = np.concatenate(list(tiny_pipe.stream(portraits[:2], _chunks(x, rate, rate), **kw)))
    assert out.frames.shape == streamed.shape == (42, 64, 64, 3)
    assert len(out.timings) == 6
    assert np.array_equal(out.frames, streamed)
    assert out.audio.shape[0] == round(x.size * SAMPLE_RATE / rate)


def test_guidance_one_is_single_unguided_branch(tiny_pipe, portraits):
    stream = tiny_pipe.start_stream(portraits[:1], guidance_audio=1.0, guidance_reference=1.0, num_inference_steps=2)
    assert stream.group.settings.num_cfg_rows == 1
    stream = tiny_pipe.start_stream(portraits[:1], guidance_audio=2.0, guidance_reference=1.0)
    assert stream.group.settings.num_cfg_rows == 2
    x = (speech_like(1.0), SAMPLE_RATE)
    base = tiny_pipe(
        portraits[:1], x, guidance_audio=1.0, guidance_reference=1.0, num_inference_steps=2, generator=_gen()
    ).frames
    for ga, gr in [(2.0, 1.0), (1.0, 2.0), (3.0, 3.0)]:
        other = tiny_pipe(
            portraits[:1], x, guidance_audio=ga, guidance_reference=gr, num_inference_steps=2, generator=_gen()
        ).frames
        assert np.abs(other.astype(int) - base.astype(int)).max() > 0, (ga, gr)


def test_run_settings_are_one_object_built_once(tiny_pipe, portraits):
    """The run settings by name or as one `StreamSettings` are the same thing: the group keeps the object it was
    given (no copy to drift), its position reads the block size from it, and a bad or unknown name is refused."""
    settings = tiny_pipe.stream_settings(guidance_audio=3.0, num_inference_steps=1)
    assert (settings.block_size, settings.kv_window) == (2, 8)  # the tiny transformer's own
    assert settings == tiny_pipe.stream_settings(StreamSettings(guidance_audio=3.0), num_inference_steps=1)
    group = tiny_pipe.start_streams([portraits[:1]], settings=settings)
    assert group.settings is settings and group.position.block_size == 2 and group.streams[0].kv_cache.block_size == 2
    assert tiny_pipe.start_stream(portraits[:1], guidance_audio=3.0, num_inference_steps=1).group.settings == settings
    with pytest.raises(TypeError, match="align_face.*guidance_audio"):
        tiny_pipe.start_stream(portraits[:1], align_face=True)
    with pytest.raises(ValueError, match="kv_window=8"):
        tiny_pipe.stream_settings(block_size=3)
    with pytest.raises(ValueError, match="num_inference_steps"):
        StreamSettings(num_inference_steps=True)


def test_cfg_combine_is_equation_I():
    g = torch.Generator().manual_seed(0)
    full, no_audio, no_ref = torch.randn(3, 1, 4, generator=g).unbind(0)
    v = torch.stack([full, no_audio, no_ref])
    la, lr = 2.5, 1.7
    expected = la * (full - no_audio) + lr * (full - no_ref) - full + no_audio + no_ref

    def combine(rows, guidance_audio, guidance_reference):  # the rows these settings compute, in their order
        settings = StreamSettings(guidance_audio=guidance_audio, guidance_reference=guidance_reference)
        assert settings.num_cfg_rows == len(rows)
        return cfg_combine(rows, settings)[0]

    torch.testing.assert_close(combine(v, la, lr), expected)
    torch.testing.assert_close(combine(v[:2], la, 1.0), la * (full - no_audio) + no_audio)
    torch.testing.assert_close(combine(v[[0, 2]], 1.0, lr), lr * (full - no_ref) + no_ref)
    torch.testing.assert_close(combine(v[:1], 1.0, 1.0), full)


@pytest.mark.parametrize("seconds", [0.2, 0.52, 0.84, 1.37])  # 5 frames = 1 block, 21 = 3 blocks, 35 = 1 + 3.75
def test_frame_count_matches_audio(tiny_pipe, portraits, seconds):
    x = speech_like(seconds)
    out = tiny_pipe(portraits[:1], (x, SAMPLE_RATE), num_inference_steps=1, generator=_gen())
    assert out.frames.shape[0] == int(np.ceil(x.size / (SAMPLE_RATE / FPS)))
    assert out.frames.dtype == np.uint8 and out.frames.shape[1:] == (64, 64, 3)


def test_interleaved_streams_are_isolated(tiny_pipe, portraits):
    xa, xb = speech_like(1.5, seed=1), speech_like(1.5, 44100, seed=2)
    alone_a = np.concatenate(
        list(tiny_pipe.stream(portraits[:1], _chunks(xa, SAMPLE_RATE, 0), generator=_gen(1), num_inference_steps=2))
    )
    alone_b = np.concatenate(
        list(
            tiny_pipe.stream(
                portraits[1:3], _chunks(xb, 44100, 1), guidance_audio=3.0, generator=_gen(2), num_inference_steps=2
            )
        )
    )
    sa = tiny_pipe.start_stream(portraits[:1], generator=_gen(1), num_inference_steps=2)
    sb = tiny_pipe.start_stream(portraits[1:3], guidance_audio=3.0, generator=_gen(2), num_inference_steps=2)
    got_a, got_b = [], []
    for a, b in itertools.zip_longest(_chunks(xa, SAMPLE_RATE, 0), _chunks(xb, 44100, 1)):  # alternate chunks
        if a is not None:
            got_a += [block.frames for block in tiny_pipe.feed(sa, *a)]
        if b is not None:
            got_b += [block.frames for block in tiny_pipe.feed(sb, *b)]
    got_a += [block.frames for block in tiny_pipe.flush(sa)]
    got_b += [block.frames for block in tiny_pipe.flush(sb)]
    assert np.array_equal(np.concatenate(got_a), alone_a)
    assert np.array_equal(np.concatenate(got_b), alone_b)


def test_save_load_round_trip(tiny_pipe, portraits, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    files = {p.suffix for p in (tmp_path / "pipe").rglob("*") if p.is_file()}
    assert ".safetensors" in files and not files & {".bin", ".pt", ".pth", ".ckpt"}
    loaded = PortraitRTPipeline.from_pretrained(tmp_path / "pipe")
    for name in ("vae", "transformer", "audio_encoder"):
        before, after = getattr(tiny_pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), name
    x = (speech_like(0.8), SAMPLE_RATE)
    a = tiny_pipe(portraits[:2], x, num_inference_steps=2, generator=_gen(5)).frames
    b = loaded(portraits[:2], x, num_inference_steps=2, generator=_gen(5)).frames
    # Same weights bit for bit; freshly loaded tensors may take other (equally exact) CPU kernel paths, which can
    # move a rounding boundary by one level in a few pixels.
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1 and (a != b).mean() < 0.01


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"reference_images": []}, "at least one"),
        ({"reference_images": "P4"}, "1 to 3"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_audio": -1.0}, "guidance_audio"),
        ({"guidance_reference": 1e6}, "guidance_reference"),
        ({"audio": (np.zeros(16000, np.float32), SAMPLE_RATE)}, "silent"),
        ({"audio": (np.zeros(0, np.float32), SAMPLE_RATE)}, "empty"),
        ({"block_size": 7}, "block_size"),
        ({"reference_images": [b"not an image"]}, "reference image"),
    ],
)
def test_bad_inputs(tiny_pipe, portraits, kwargs, match):
    args = {"reference_images": portraits[:1], "audio": (speech_like(0.5), SAMPLE_RATE), "num_inference_steps": 1}
    if kwargs.get("reference_images") == "P4":
        kwargs = {"reference_images": portraits + portraits[:1]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tiny_pipe(**args)


def test_from_preset_paper_on_meta_allocates_nothing():
    with torch.device("meta"):
        pipe = PortraitRTPipeline.from_preset("paper")
    assert all(p.is_meta for p in pipe.transformer.parameters())
    assert sum(p.numel() for p in pipe.transformer.parameters()) > 0.9e9


def test_stream_group_batches_streams_like_solo_runs(tiny_pipe, portraits):
    xa, xb = speech_like(1.3, seed=4), speech_like(1.0, 48000, seed=5)
    kw = {"num_inference_steps": 2, "kv_window": 4}
    solo_a = np.concatenate(
        list(tiny_pipe.stream(portraits[:1], _chunks(xa, SAMPLE_RATE, 0), generator=_gen(1), **kw))
    )
    solo_b = np.concatenate(list(tiny_pipe.stream(portraits[2:], _chunks(xb, 48000, 1), generator=_gen(2), **kw)))
    group = tiny_pipe.start_streams([portraits[:1], portraits[2:]], generators=[_gen(1), _gen(2)], **kw)
    got = [[], []]
    for a, b in itertools.zip_longest(_chunks(xa, SAMPLE_RATE, 0), _chunks(xb, 48000, 1)):
        for i, blocks in enumerate(tiny_pipe.feed_group(group, [a, b])):
            got[i] += [block.frames for block in blocks]
    batched_blocks = len(got[1])
    for i, stream in enumerate(group.streams):  # each leaves the group to end on its own
        got[i] += [block.frames for block in tiny_pipe.flush(stream)]
    assert batched_blocks >= 2  # blocks really ran batched before the streams were flushed apart
    for solo, frames in ((solo_a, got[0]), (solo_b, got[1])):
        frames = np.concatenate(frames)
        assert frames.shape == solo.shape
        assert np.abs(frames.astype(int) - solo.astype(int)).max() <= 1  # batched GEMMs may round differently


def test_block_records_carry_the_audio_of_their_frames(tiny_pipe, portraits):
    """Each block's audio is exactly the model-rate samples of its frames: frame i <-> samples [640 i, 640 (i + 1))."""
    x, rate = speech_like(1.37, 44100, seed=6), 44100
    stream = tiny_pipe.start_stream(portraits[:1], num_inference_steps=1, generator=_gen())
    blocks = [block for chunk in _chunks(x, rate, 2) for block in tiny_pipe.feed(stream, *chunk)]
    blocks += list(tiny_pipe.flush(stream))
    resampled = AudioStreamBuffer()  # the clip at the model rate, as any chunking resamples it
    resampled.push(x, rate)
    resampled.close()
    model_rate = resampled.pop(resampled.available)
    num_frames = sum(len(block.frames) for block in blocks)
    assert num_frames == -(-model_rate.size // SAMPLES_PER_FRAME)
    padded = np.pad(
        model_rate, (0, num_frames * SAMPLES_PER_FRAME - model_rate.size)
    )  # the last frame's tail: silence
    first = 0
    for block in blocks:
        assert block.first_frame == first and block.audio.size == len(block.frames) * SAMPLES_PER_FRAME
        assert np.array_equal(
            block.audio, padded[first * SAMPLES_PER_FRAME : block.audio.size + first * SAMPLES_PER_FRAME]
        )
        first += len(block.frames)
    out = tiny_pipe(portraits[:1], (x, rate), num_inference_steps=1, generator=_gen())
    assert np.array_equal(out.audio, model_rate)  # __call__ returns the audio its blocks carried: no second resampling


def test_a_group_block_decodes_all_streams_in_one_vae_call(tiny_pipe, portraits, monkeypatch):
    decode, batch_sizes = tiny_pipe.vae.decode_chunk, []

    def counting_decode(z, f_c, cache=None):
        batch_sizes.append(z.shape[0])
        return decode(z, f_c, cache=cache)

    monkeypatch.setattr(tiny_pipe.vae, "decode_chunk", counting_decode)
    group = tiny_pipe.start_streams([portraits[:1], portraits[1:2], portraits[2:]], num_inference_steps=1)
    blocks = tiny_pipe.feed_group(group, [(speech_like(0.8, seed=i), SAMPLE_RATE) for i in range(3)])
    assert len(blocks[0]) >= 2 and batch_sizes == [3] * len(blocks[0])
    with pytest.raises(ValueError, match="feed_group"):
        next(tiny_pipe.feed(group.streams[0], speech_like(0.1), SAMPLE_RATE))


@torch.no_grad()
def test_batched_decode_equals_solo_decodes(tiny_pipe):
    """Streams' latents, reference features and causal caches stacked along the batch decode as each alone would."""
    from .conftest import perturb_

    vae = perturb_(copy.deepcopy(tiny_pipe.vae), std=0.02)
    g = torch.Generator().manual_seed(0)
    f_c, _ = vae.encode_reference(torch.rand(2, 2, 3, 64, 64, generator=g) * 2 - 1)  # 2 streams x 2 references
    z = torch.randn(2, 64, 6, 1, 1, generator=g)  # 3 blocks of 2 latent frames per stream
    batched_cache, solo_caches = None, [None, None]
    for block in range(3):
        z_block = z[:, :, 2 * block : 2 * block + 2]
        video, batched_cache = vae.decode_chunk(z_block, f_c, cache=batched_cache)
        for i in range(2):
            solo, solo_caches[i] = vae.decode_chunk(z_block[i : i + 1], f_c[i : i + 1], cache=solo_caches[i])
            batched, alone = tensor_to_frames(video[i]).astype(int), tensor_to_frames(solo[0]).astype(int)
            assert np.abs(batched - alone).max() <= 1  # the group tests' tolerance


def test_bfloat16_pipeline_stays_close_to_float32(tiny_pipe, portraits, tmp_path):
    """The GPU dtype path (bf16 weights, fp32 norms/AdaLN kept by diffusers) against the fp32 reference path."""
    from portrait_rt.loading import load_pipeline

    tiny_pipe.save_pretrained(tmp_path / "pipe")
    bf16 = load_pipeline(str(tmp_path / "pipe"), "cpu", torch.bfloat16)
    assert bf16.transformer.proj_out.weight.dtype == torch.bfloat16
    assert bf16.transformer.blocks[0].scale_shift_table.dtype == torch.float32
    x = (speech_like(0.6), SAMPLE_RATE)
    ref = tiny_pipe(portraits[:1], x, num_inference_steps=2, generator=_gen(7)).frames.astype(float)
    low = bf16(portraits[:1], x, num_inference_steps=2, generator=_gen(7)).frames.astype(float)
    assert ref.shape == low.shape
    assert np.abs(ref - low).mean() < 3.0, np.abs(ref - low).mean()  # uint8 levels
