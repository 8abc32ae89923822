"""The fast path (`enable_fast_path`, the one way to go fast) against eager: static-shape KV cache == prefix cache, one
graph for every window position, the whole fast path (aot_eager in the default run; inductor opt-in), decode overlap
(order and frames). GPU-only checks carry the `gpu` marker (skipped here; `benchmarks/gpu_check.sh` runs them on a
lent GPU)."""

import os

import numpy as np
import pytest
import torch

from portrait_rt.models.transformer import FlowDiT
from portrait_rt.pipeline import PortraitRTPipeline
from portrait_rt.presets import TRANSFORMER_PRESETS

from .conftest import perturb_, speech_like
from .test_transformer import H, K, W, audio_slice, inputs

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = TRANSFORMER_PRESETS["tiny"]


def _run_window(dit, cache, x, blocks, drop_audio):
    """Algorithm 2 block by block through a window reset: the velocity of every block."""
    out = []
    for b in range(blocks):
        frames, a = slice(b * K, (b + 1) * K), x["audio_features"][:, audio_slice(b)]
        out.append(dit.forward_cached(cache, x["latents"][:, :, frames], x["timestep"], a, drop_audio=drop_audio))
        dit.update_cache(cache, x["latents"][:, :, frames] * 0.5, a, drop_audio=drop_audio)
    return out


@torch.no_grad()
def test_static_shape_cache_equals_prefix_cache():
    """The whole buffer with a length mask (and a device window position) == attention over the valid prefix."""
    torch.manual_seed(0)
    dit = perturb_(FlowDiT(**CFG), std=0.2).eval().double()
    blocks = CFG["kv_window"] // K + 2  # past the reset: the masked tail holds the old window's stale K/V
    x = inputs(batch=3, frames=blocks * K, refs=2, dtype=torch.float64)
    drop = torch.tensor([False, True, False])
    caches = [dit.init_kv_cache(3, 2, (H, W), static_shapes=s) for s in (False, True)]
    for cache in caches:
        dit.prefill_references(cache, x["reference_latents"])
    prefix, static = (_run_window(dit, cache, x, blocks, drop) for cache in caches)
    for a, b in zip(prefix, static):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    valid = caches[0].num_latent_frames
    assert caches[1].num_latent_frames == valid and caches[1].position.item() == valid - K  # the last block written
    end = caches[0].num_reference_tokens + valid * H * W
    torch.testing.assert_close(caches[0].key[:, :, :end], caches[1].key[:, :, :end], atol=1e-10, rtol=1e-10)


@torch.no_grad()
def test_one_graph_serves_every_window_position():
    """With static shapes G's cached pass captures as one graph for all window positions (no recompile), which is
    what a single CUDA graph per cache needs; the prefix cache recompiles per position."""
    import torch._dynamo

    torch.manual_seed(0)
    dit = perturb_(FlowDiT(**CFG), std=0.2).eval()
    x = inputs(batch=1, frames=(CFG["kv_window"] // K + 1) * K, refs=1)
    eager_cache = dit.init_kv_cache(1, 1, (H, W), static_shapes=True)
    dit.prefill_references(eager_cache, x["reference_latents"])
    eager = _run_window(dit, eager_cache, x, CFG["kv_window"] // K + 1, None)

    torch._dynamo.reset()
    compiled_step = torch.compile(dit._cached_step, backend="eager", fullgraph=True)
    dit.set_cached_step_runner(lambda step, *inputs: compiled_step(*inputs))
    try:
        cache = dit.init_kv_cache(1, 1, (H, W), static_shapes=True)
        dit.prefill_references(cache, x["reference_latents"])
        compiled = []
        for b in range(CFG["kv_window"] // K + 1):  # blocks 0 (stream start) and 1 compile; no position after them
            with torch._dynamo.config.patch(error_on_recompile=b > 1):
                frames, a = slice(b * K, (b + 1) * K), x["audio_features"][:, audio_slice(b)]
                compiled.append(dit.forward_cached(cache, x["latents"][:, :, frames], x["timestep"], a))
                dit.update_cache(cache, x["latents"][:, :, frames] * 0.5, a)
    finally:
        dit.set_cached_step_runner(None)
        torch._dynamo.reset()
    assert cache.num_latent_frames == 2 * K  # the window was reset, the last block re-fed, one more block
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _frames(pipe, portraits, seconds=1.2, **kwargs):
    audio = (speech_like(seconds), 16000)
    return pipe(portraits[:1], audio, num_inference_steps=2, generator=torch.Generator().manual_seed(1), **kwargs)


def test_fast_path_equals_eager(portraits):
    """`enable_fast_path(backend="aot_eager")` on the CPU: regional compilation of G's and the VAE's blocks (graph
    capture, no code generation, so it is quick here; inductor compiles the same graphs) and static-shape KV caches.
    The frames of a stream through a KV window reset equal eager within one level (float reordering); the model's own
    cached step is left as it is (no CUDA graphs off CUDA)."""
    import torch._dynamo

    torch.manual_seed(0)
    pipe = PortraitRTPipeline.from_preset("tiny")
    perturb_(pipe.transformer)
    eager = _frames(pipe, portraits).frames
    torch._dynamo.reset()
    try:
        pipe.enable_fast_path(backend="aot_eager")
        assert pipe._fast_path.compiled and not pipe._fast_path.cuda_graphs
        assert pipe.transformer._cached_step_runner is None
        fast = _frames(pipe, portraits).frames
    finally:
        torch._dynamo.reset()
    assert fast.shape == eager.shape
    assert np.abs(fast.astype(int) - eager.astype(int)).max() <= 1


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("PORTRAIT_RT_COMPILE_TESTS"), reason="inductor compiles take ~5 min on 2 shared CPU cores"
)
def test_fast_path_with_inductor_equals_eager(portraits):
    """`enable_fast_path()` with inductor (on the CPU here: its C++ backend; regional compilation of G and the VAE):
    the frames of a stream through a KV window reset equal eager within one level. Opt in with
    PORTRAIT_RT_COMPILE_TESTS=1 (benchmarks/gpu_check.sh does)."""
    torch.manual_seed(0)
    pipe = PortraitRTPipeline.from_preset("tiny")
    perturb_(pipe.transformer)
    eager = _frames(pipe, portraits).frames
    pipe.enable_fast_path()
    assert pipe._fast_path.compiled and not pipe._fast_path.cuda_graphs and not pipe._fast_path.overlap_decode
    fast = _frames(pipe, portraits).frames
    assert fast.shape == eager.shape
    assert np.abs(fast.astype(int) - eager.astype(int)).max() <= 1


def test_decode_overlap_order_and_frames(portraits, monkeypatch):
    """With decode overlap, block i is yielded only after G of block i + 1 was queued (when its audio is there), and
    at once when it is not; the frames are those of the plain loop."""
    torch.manual_seed(0)
    pipe = PortraitRTPipeline.from_preset("tiny")
    perturb_(pipe.transformer)
    pipe.enable_fast_path(compile=False, overlap_decode=False)
    plain = _frames(pipe, portraits).frames
    pipe.enable_fast_path(compile=False, overlap_decode=True)
    calls = []
    forward_cached = pipe.transformer.forward_cached
    monkeypatch.setattr(pipe.transformer, "forward_cached", lambda *a, **k: calls.append(1) or forward_cached(*a, **k))
    steps = 2
    stream = pipe.start_stream(portraits[:1], num_inference_steps=steps, generator=torch.Generator().manual_seed(1))
    audio = speech_like(1.2)
    seen = []  # G passes queued when each block came out
    for record in pipe.feed(stream, audio, 16000):
        seen.append((record.timing.block, len(calls)))
    for record in pipe.flush(stream):
        seen.append((record.timing.block, len(calls)))
    blocks = len(seen)
    assert blocks >= 3
    # all the audio came in one chunk: every block but the last of `feed` waited for the next block's G
    fed = [n for b, n in seen if n > (b + 1) * steps]
    assert len(fed) >= blocks - 2
    for b, n in seen:
        assert n >= (b + 1) * steps  # its own G was done

    fast = _frames(pipe, portraits).frames
    np.testing.assert_array_equal(fast, plain)

    # one block's audio at a time: nothing to overlap with, each block comes out in its own feed
    stream = pipe.start_stream(portraits[:1], num_inference_steps=steps, generator=torch.Generator().manual_seed(1))
    first = stream.group.position.block_video_frames(0) + pipe.audio_encoder.config.lookahead_frames
    assert len(list(pipe.feed(stream, audio[: first * 640], 16000))) == 1


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it)")


@pytest.mark.gpu
@gpu
@torch.no_grad()
def test_cuda_graphs_equal_eager_on_gpu():
    """G's cached passes replayed from CUDA graphs (static-shape cache) == eager on the same GPU, through a reset."""
    from portrait_rt.fast_path import CachedStepGraphs

    torch.manual_seed(0)
    dit = perturb_(FlowDiT(**CFG), std=0.2).eval().cuda()
    blocks = CFG["kv_window"] // K + 2
    x = {k: v.cuda() for k, v in inputs(batch=3, frames=blocks * K, refs=2).items()}
    drop = torch.tensor([False, True, False], device="cuda")
    caches = [dit.init_kv_cache(3, 2, (H, W), static_shapes=True) for _ in range(2)]
    for cache in caches:
        dit.prefill_references(cache, x["reference_latents"])
    eager = _run_window(dit, caches[0], x, blocks, drop)
    dit.set_cached_step_runner(CachedStepGraphs())
    try:
        graphed = _run_window(dit, caches[1], x, blocks, drop)
    finally:
        dit.set_cached_step_runner(None)
    assert len(caches[1].graphs) == 2  # stream start + the rest: one graph for every window position
    for a, b in zip(eager, graphed):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@gpu
def test_fast_path_equals_eager_on_gpu(portraits):
    """The whole fast path on CUDA (compiled blocks, CUDA graphs, decode overlap) == eager on CUDA, fp32."""
    torch.manual_seed(0)
    pipe = PortraitRTPipeline.from_preset("tiny")
    perturb_(pipe.transformer)
    pipe.to("cuda")
    eager = _frames(pipe, portraits).frames
    pipe.enable_fast_path()
    assert pipe._fast_path.cuda_graphs and pipe._fast_path.overlap_decode
    fast = _frames(pipe, portraits).frames
    assert np.abs(fast.astype(int) - eager.astype(int)).max() <= 1
