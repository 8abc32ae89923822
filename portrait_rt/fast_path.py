"""The fast path (`PortraitRTPipeline.enable_fast_path()`): the same frames as eager, with less time per block.

Each piece is one idea, and each is checked against the eager path (tests/test_fast_path.py):

- **static shapes**: G's KV cache keeps its full size and masks what is not yet valid (`KVCache.position`, a device
  tensor), so the passes at every window position run one set of shapes: one compiled graph, one CUDA graph;
- **regional compilation** (diffusers' `compile_repeated_blocks`): G's `FlowDiTBlock`s and the VAE's repeated
  blocks. Inductor fuses their elementwise work (AdaLN modulate, RoPE, casts; RMSNorm + SiLU and the causal
  padding copy in the decoder) into a few kernels around the GEMMs and convolutions;
- **CUDA graphs** (CUDA only, `CachedStepGraphs`): G's whole cached pass replayed from a graph, so a block costs what
  its kernels cost instead of ~1,400 kernel launches per pass;
- **decode overlap** (CUDA only): the pipeline decodes block i on a second CUDA stream while G runs block i + 1
  (`PortraitRTPipeline._run_blocks`), so throughput is set by the slower of the two, not their sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FastPathSettings:
    """What `enable_fast_path` turned on; the pipeline reads it (None: the eager path)."""

    compiled: bool  # G's and the VAE's repeated blocks go through torch.compile
    cuda_graphs: bool  # G's cached passes replay CUDA graphs (static-shape caches on CUDA)
    overlap_decode: bool  # decode of block i is yielded after G of block i + 1 is queued
    decode_stream: torch.cuda.Stream | None = None  # where the overlapped decode runs (None: the current stream)


def compile_repeated_blocks(pipe, backend: str = "inductor", mode: str | None = None) -> None:
    """Regional compilation of G's and the VAE's `_repeated_blocks`, each block class once per shape.

    Static shapes (`dynamic=False`): a block sees few shapes (per group size; per stage in the VAE) and static kernels
    are the fast ones (inductor's dynamic-shape lowering of the VAE's padded convolutions also fails, torch 2.13). The
    VAE's blocks meet far more shapes (stage x first chunk or not x group size x dtype) than dynamo's default
    recompile limit (8 per code object) allows, and with `fullgraph` hitting it is an error, so it is raised.
    """
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 512)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4096)
    for model in (pipe.transformer, pipe.vae):
        model.compile_repeated_blocks(fullgraph=True, dynamic=False, backend=backend, mode=mode)


class CachedStepGraphs:
    """A runner (`FlowDiT.set_cached_step_runner`) that replays `FlowDiT._cached_step` from CUDA graphs, captured on
    first use per (inputs' shapes, stream start).

    A graph bakes in the addresses of the cache's buffers and of the device tensor holding its window position, so it
    lives in `cache.graphs` (gone with the cache) and serves every window position of that cache. Inputs are copied
    into the graph's own tensors before each replay; the velocity is returned as a copy. Caches without static shapes,
    and tensors not on CUDA, run the step as it is.
    """

    def __call__(self, step, cache, latents, timestep, audio_features, drop_audio, stream_start: bool) -> torch.Tensor:
        inputs = (latents, timestep, audio_features, drop_audio)
        if not cache.static_shapes or latents.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return step(cache, *inputs, stream_start)
        key = (stream_start, *(None if x is None else (tuple(x.shape), x.dtype) for x in inputs))
        if key not in cache.graphs:
            cache.graphs[key] = self._capture(step, cache, inputs, stream_start)
        graph, static_inputs, static_output = cache.graphs[key]
        for static, x in zip(static_inputs, inputs):
            if static is not None:
                static.copy_(x)
        graph.replay()
        return static_output.clone()

    @staticmethod
    def _capture(step, cache, inputs, stream_start: bool):
        static_inputs = [None if x is None else x.clone() for x in inputs]
        # Warm up on a side stream (lazy initialisation, compilation of a new shape), as torch.cuda.graphs asks; the
        # pass only writes K/V past the cache's valid length (or the same values a replay writes next).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step(cache, *static_inputs, stream_start)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = step(cache, *static_inputs, stream_start)
        return graph, static_inputs, static_output
