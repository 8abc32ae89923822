"""FlowDiT: blockwise causality, cached == uncached (with a window reset), CFG nulls, references, save/load."""

import pytest
import torch

from portrait_rt.constants import video_frames_for_latents
from portrait_rt.models.transformer import FlowDiT
from portrait_rt.presets import TRANSFORMER_PRESETS

from .conftest import perturb_

CFG = TRANSFORMER_PRESETS["tiny"]
K = CFG["block_size"]  # 2
H, W = 2, 3


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    return perturb_(FlowDiT(**CFG), std=0.2).eval()


def inputs(batch=2, frames=3 * K, refs=2, stream_start=True, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    num_audio = video_frames_for_latents(frames, first=stream_start)
    return {
        "latents": torch.randn(batch, 64, frames, H, W, generator=g, dtype=dtype),
        "timestep": torch.rand(batch, generator=g, dtype=dtype) * 1000,
        "audio_features": torch.randn(batch, num_audio, CFG["audio_dim"], generator=g, dtype=dtype),
        "reference_latents": torch.randn(batch, refs, 64, H, W, generator=g, dtype=dtype),
    }


def audio_slice(block: int, stream_start_block: int = 0) -> slice:
    """Per-video-frame audio of latent block `block` of a stream that started at block `stream_start_block`."""
    first = video_frames_for_latents(block * K) if block else 0
    return slice(first, video_frames_for_latents((block + 1) * K))


@torch.no_grad()
def test_blockwise_causality(dit):
    x = inputs()
    base = dit(**x)[0]
    for j in range(1, 3):
        y = {k: v.clone() for k, v in x.items()}
        y["latents"][:, :, j * K :] += 1.0
        y["audio_features"][:, audio_slice(j).start :] += 1.0
        out = dit(**y)[0]
        assert torch.equal(out[:, :, : j * K], base[:, :, : j * K]), f"block {j} leaked into earlier blocks"
        assert not torch.allclose(out[:, :, j * K :], base[:, :, j * K :])


@torch.no_grad()
def test_teacher_forcing_causality(dit):
    """Target block j sees context blocks < j and itself; context block j sees context blocks <= j."""
    x = inputs()
    ctx = torch.randn_like(x["latents"])
    base = dit(**x, context_latents=ctx, context_timestep=torch.full((2,), 300.0))[0]
    ctx2 = ctx.clone()
    ctx2[:, :, K : 2 * K] += 1.0  # perturb context block 1
    out = dit(**x, context_latents=ctx2, context_timestep=torch.full((2,), 300.0))[0]
    assert torch.equal(out[:, :, : 2 * K], base[:, :, : 2 * K])  # targets 0 and 1 do not see context block 1
    assert not torch.allclose(out[:, :, 2 * K :], base[:, :, 2 * K :])  # target 2 does


@torch.no_grad()
def test_cached_equals_uncached_with_window_reset():
    """Algorithm 2 block by block (3 CFG rows, window reset after 4 blocks) == the full-sequence forward."""
    torch.manual_seed(0)
    dit = perturb_(FlowDiT(**CFG), std=0.2).eval().double()
    blocks = CFG["kv_window"] // K + 1  # one block past the window: forces a reset and a re-feed
    x = inputs(batch=3, frames=blocks * K, refs=3, dtype=torch.float64)
    noisy, refs, audio, t = x["latents"], x["reference_latents"], x["audio_features"], x["timestep"]
    clean = torch.randn_like(noisy)
    drops = {"drop_audio": torch.tensor([False, True, False]), "drop_reference": torch.tensor([False, False, True])}

    cache = dit.init_kv_cache(3, 3, (H, W))
    dit.prefill_references(cache, refs, drop_reference=drops["drop_reference"])
    cached, cached_frames = [], []
    for b in range(blocks):
        frames, a = slice(b * K, (b + 1) * K), audio[:, audio_slice(b)]
        cached.append(dit.forward_cached(cache, noisy[:, :, frames], t, a, drop_audio=drops["drop_audio"]))
        dit.update_cache(cache, clean[:, :, frames], a, drop_audio=drops["drop_audio"])
        cached_frames.append(cache.num_latent_frames)
    # the window fills at block blocks-2: reset to the references + the re-fed block, then one more block
    assert cached_frames == [(b + 1) * K for b in range(blocks - 2)] + [K, 2 * K]

    # First window: teacher forcing over blocks 0..blocks-2 with the clean blocks as context (t' = 0).
    n = (blocks - 1) * K
    full = dit(noisy[:, :, :n], t, audio[:, : video_frames_for_latents(n)], refs, context_latents=clean[:, :, :n],
               **drops)[0]  # fmt: skip
    torch.testing.assert_close(torch.cat(cached[:-1], dim=2), full, atol=1e-5, rtol=1e-5)

    # After the reset: a window not at stream start whose first block is the re-fed last block (positions 0..k-1).
    window = slice(n - K, n + K)
    a = audio[:, audio_slice(blocks - 2).start : audio_slice(blocks - 1).stop]
    after = dit(noisy[:, :, window], t, a, refs, context_latents=clean[:, :, window], stream_start=False, **drops)[0]
    torch.testing.assert_close(cached[-1], after[:, :, K:], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_plain_causal_forward_equals_cached_at_t0(dit):
    x = inputs(batch=1, frames=2 * K, refs=1)
    x["timestep"] = torch.zeros(1)
    full = dit(**x)[0]
    cache = dit.init_kv_cache(1, 1, (H, W))
    dit.prefill_references(cache, x["reference_latents"])
    for b in range(2):
        frames, a = slice(b * K, (b + 1) * K), x["audio_features"][:, audio_slice(b)]
        v = dit.forward_cached(cache, x["latents"][:, :, frames], x["timestep"], a)
        torch.testing.assert_close(v, full[:, :, frames], atol=1e-5, rtol=1e-5)
        dit.update_cache(cache, x["latents"][:, :, frames], a)


@torch.no_grad()
def test_null_embeddings_and_mask_token_change_output(dit):
    x = inputs()
    base = dit(**x)[0]
    keep = torch.tensor([False, False])
    torch.testing.assert_close(dit(**x, drop_audio=keep, drop_reference=keep)[0], base)
    drop = torch.tensor([True, False])
    no_audio = dit(**x, drop_audio=drop)[0]
    no_ref = dit(**x, drop_reference=drop)[0]
    for out in (no_audio, no_ref):
        assert not torch.allclose(out[0], base[0], atol=1e-4)
        torch.testing.assert_close(out[1], base[1])  # other rows untouched
    # The mask token and the first-frame embedder apply only at stream start.
    y = {**x, "audio_features": torch.cat([x["audio_features"][:, :1].repeat(1, 3, 1), x["audio_features"]], 1)}
    assert not torch.allclose(dit(**y, stream_start=False)[0][:, :, 0], base[:, :, 0], atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("num_refs", [1, 2, 3])
def test_reference_counts_and_order(dit, num_refs):
    x = inputs(refs=num_refs)
    out = dit(**x)[0]
    assert out.shape == x["latents"].shape and torch.isfinite(out).all()
    flipped = {**x, "reference_latents": x["reference_latents"].flip(1)}
    torch.testing.assert_close(dit(**flipped)[0], out, atol=1e-5, rtol=1e-5)  # reference order does not matter
    if num_refs > 1:
        fewer = {**x, "reference_latents": x["reference_latents"][:, :1]}
        assert not torch.allclose(dit(**fewer)[0], out, atol=1e-4)


def test_training_step_backward():
    x = inputs()
    model = FlowDiT(**CFG)  # fresh adaLN-zero model: output 0, gradients still flow to the output head
    v = model(**x, context_latents=torch.randn_like(x["latents"]), drop_audio=torch.tensor([True, False]))[0]
    assert torch.count_nonzero(v) == 0
    (v - 1).square().mean().backward()
    assert model.proj_out.weight.grad.abs().sum() > 0


def test_bad_inputs_raise(dit):
    x = inputs()
    with pytest.raises(ValueError, match="audio_features"):
        dit(**{**x, "audio_features": x["audio_features"][:, :-1]})
    with pytest.raises(ValueError, match="reference_latents"):
        dit(**{**x, "reference_latents": torch.randn(2, 4, 64, H, W)})
    cache = dit.init_kv_cache(2, 2, (H, W))
    with pytest.raises(ValueError, match="prefill_references"):
        dit.forward_cached(cache, x["latents"][:, :, :K], x["timestep"], x["audio_features"][:, :5])
    with pytest.raises(ValueError, match="kv_window"):
        dit.init_kv_cache(2, 2, (H, W), kv_window=3)


@torch.no_grad()
def test_save_load_round_trip(dit, tmp_path):
    dit.save_pretrained(tmp_path)
    loaded = FlowDiT.from_pretrained(tmp_path).eval()
    x = inputs()
    torch.testing.assert_close(loaded(**x)[0], dit(**x)[0])


def test_paper_preset_parameter_count():
    with torch.device("meta"):
        model = FlowDiT(**TRANSFORMER_PRESETS["paper"])
    count = sum(p.numel() for p in model.parameters())
    assert 0.9e9 <= count <= 1.1e9, count  # the paper's generator: about 1B parameters
    assert (model.config.num_layers, model.config.num_attention_heads, model.config.attention_head_dim) == (
        24,
        12,
        128,
    )
