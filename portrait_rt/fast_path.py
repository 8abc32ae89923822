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
  (`PortraitRTPipeline._run_blocks`), so throughput is set by the slower of the two, not their sum;
- **ahead-of-time compilation** (ZeroGPU, where torch.compile does not run): the same repeated blocks exported
  (`torch.export`) at the shapes a warm-up calls them with and compiled by `spaces.aoti_compile` (AOTInductor),
  each instance running that code with its own weights (`aoti_compile_repeated_blocks`, then
  `enable_fast_path(compile=<its result>)`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class FastPathSettings:
    """What `enable_fast_path` turned on; the pipeline reads it (None: the eager path)."""

    compiled: bool  # G's and the VAE's repeated blocks go through torch.compile (or ahead-of-time compiled code)
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
        if isinstance(cache, list):  # several streams' caches (a group): run as it is
            return step(cache, *inputs, stream_start)
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


# ---------------------------------------------------------------------------------------------- ZeroGPU: AoTI
# ZeroGPU runs no torch.compile (its GPU comes and goes with each @spaces.GPU call); it runs ahead-of-time compiled
# code (`spaces.aoti_compile`, PyTorch's AOTInductor). The repeated blocks get it, as regional compilation does:
# the calls of one run are recorded, each block kind's frequent call shapes exported (`torch.export`) and compiled
# once, and every instance of the kind runs that code with its own weights. Any other call shape runs eager.


def call_signature(args: tuple, kwargs: dict) -> tuple:
    """What an exported graph is specialised on: the call's structure, its tensors' shapes, dtypes and devices, and
    its other values (a Python int offset, None)."""
    leaves, spec = torch.utils._pytree.tree_flatten((args, kwargs))
    shapes = [(tuple(x.shape), x.dtype, x.device.type) if isinstance(x, torch.Tensor) else x for x in leaves]
    return (str(spec), *shapes)


def _block_kinds(pipe) -> dict[tuple, list[torch.nn.Module]]:
    """G's and the VAE's `_repeated_blocks` instances by kind: (model, class name, parameter shapes); instances of
    one kind can run one compiled graph with their own weights."""
    kinds: dict[tuple, list[torch.nn.Module]] = {}
    for model_name in ("transformer", "vae"):
        model = getattr(pipe, model_name)
        for module in model.modules():
            if type(module).__name__ in model._repeated_blocks:
                shapes = tuple((n, tuple(p.shape), p.dtype) for n, p in module.state_dict(keep_vars=True).items())
                kinds.setdefault((model_name, type(module).__name__, shapes), []).append(module)
    return kinds


def export_repeated_blocks(pipe, run: Callable[[], object], min_calls: int = 2) -> dict[tuple, dict]:
    """Run `run()` (a warm-up: the shapes the Space will use) recording every repeated block's calls, then export
    each kind's call shapes seen at least `min_calls` times: {kind: {signature: ExportedProgram}}, exported from the
    kind's first instance. Call after `enable_fast_path(compile=False)`, so the KV caches have static shapes."""
    kinds = _block_kinds(pipe)
    calls: dict[tuple, dict[tuple, list]] = {kind: {} for kind in kinds}
    owner = {id(m): kind for kind, modules in kinds.items() for m in modules}

    def record(module, args, kwargs):
        seen = calls[owner[id(module)]].setdefault(call_signature(args, kwargs), [0, None])
        seen[0] += 1
        if seen[1] is None and module is kinds[owner[id(module)]][0]:
            seen[1] = (args, kwargs)  # example inputs, from the instance the graph is exported from

    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for ms in kinds.values() for m in ms]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    exported: dict[tuple, dict] = {}
    with torch.no_grad():  # the KV buffers are views made under no_grad; the blocks write into them
        for kind, seen in calls.items():
            for signature, (count, example) in seen.items():
                if count >= min_calls and example is not None:
                    program = torch.export.export(kinds[kind][0], *example)
                    exported.setdefault(kind, {})[signature] = program
    return exported


def aoti_compile_repeated_blocks(pipe, run: Callable[[], object], min_calls: int = 2) -> dict[tuple, dict]:
    """`export_repeated_blocks` then `spaces.aoti_compile` of each graph: {kind: {signature: compiled}}, for
    `enable_fast_path(compile=...)`. Run it inside a `@spaces.GPU` function on ZeroGPU (it returns picklable
    compiled code; the GPU it compiled on is gone after); needs a CUDA build of torch."""
    import spaces

    exported = export_repeated_blocks(pipe, run, min_calls)
    return {kind: {sig: spaces.aoti_compile(p) for sig, p in programs.items()} for kind, programs in exported.items()}


def _zerogpu_bind(compiled, module: torch.nn.Module):
    """One compiled graph of a block kind with `module`'s own weights (what `spaces.aoti_apply` does for one)."""
    from spaces.zero.torch.aoti import ZeroGPUCompiledModel, ZeroGPUWeights

    weights = ZeroGPUWeights({**dict(module.named_parameters()), **dict(module.named_buffers())})
    return ZeroGPUCompiledModel(compiled.archive_file, weights)


class CompiledBlock:
    """A repeated block's `forward`: the compiled graph for its call's signature, its eager forward for any other."""

    def __init__(self, module: torch.nn.Module, graphs: dict[tuple, Callable]):
        self.eager, self.graphs = module.forward, graphs

    def __call__(self, *args, **kwargs):
        return self.graphs.get(call_signature(args, kwargs), self.eager)(*args, **kwargs)


def apply_compiled_blocks(pipe, compiled: dict[tuple, dict], bind: Callable | None = None) -> int:
    """Give every instance of each compiled kind its `CompiledBlock` forward, its weights bound by `bind` (default:
    ZeroGPU's compiled model with the instance's weights). Unlike `spaces.aoti_apply`, which empties the module's
    parameters, they stay: eager runs the other shapes. Returns how many blocks were given compiled code."""
    bind = bind or _zerogpu_bind
    count = 0
    for kind, modules in _block_kinds(pipe).items():
        for module in modules if kind in compiled else ():
            module.forward = CompiledBlock(module, {s: bind(c, module) for s, c in compiled[kind].items()})
            count += 1
    return count
