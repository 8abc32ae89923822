"""Ahead-of-time compiled repeated blocks (the fast path on ZeroGPU, where torch.compile does not run).

What this CPU can check: the calls of a warm-up are recorded per block kind, each frequent call shape is exported
with `torch.export` (the graph `spaces.aoti_compile` compiles), and with every block instance running its kind's
exported graph with its own weights (the binding `spaces.aoti_apply` makes, here with the exported program in place
of the compiled one), a stream gives the eager frames. `spaces.aoti_compile` itself needs a CUDA build of torch
(importing it reads `torch.version.cuda`), and AOTInductor's CPU compile of one tiny block took 5 minutes here, so the
compiled code runs only in the `gpu` test.
"""

import copy

import numpy as np
import pytest
import torch

from portrait_rt import fast_path
from portrait_rt.fast_path import CompiledBlock, export_repeated_blocks
from portrait_rt.pipeline import PortraitRTPipeline
from tests.conftest import perturb_

# torch.export's own pytree code warns about itself (torch 2.13)
pytestmark = pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning")


def _pipe(device: str = "cpu") -> PortraitRTPipeline:
    torch.manual_seed(0)
    pipe = PortraitRTPipeline.from_preset("tiny")
    perturb_(pipe.transformer)
    perturb_(pipe.audio_encoder, seed=1)
    return pipe.to(device)


def _frames(pipe) -> np.ndarray:
    refs = [np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)]
    audio = (np.random.default_rng(1).standard_normal(24000) * 0.1).astype(np.float32)
    gen = torch.Generator().manual_seed(0)
    return pipe(reference_images=refs, audio=(audio, 16000), num_inference_steps=2, generator=gen).frames


def _bind_exported(program, module):
    """The exported graph with `module`'s weights: what ZeroGPU's compiled model does with the compiled graph."""
    graph = copy.deepcopy(program.module())
    graph.load_state_dict({**dict(module.named_parameters()), **dict(module.named_buffers())}, strict=False)
    return graph


def test_every_block_runs_its_kinds_exported_graph_and_the_frames_stay(monkeypatch):
    pipe = _pipe()
    pipe.enable_fast_path(compile=False)  # static-shape KV caches: one call shape per window position
    eager = _frames(pipe)
    exported = export_repeated_blocks(pipe, lambda: pipe.warm_up(num_inference_steps=2))
    kinds = {kind[:2]: programs for kind, programs in exported.items()}
    assert len(kinds[("transformer", "FlowDiTBlock")]) >= 1  # G's per-step pass (its reference prefill: once, eager)
    assert any(model == "vae" for model, _ in kinds)  # and some of the decoder's blocks

    hits = []

    def bind(program, module):
        graph = _bind_exported(program, module)
        return lambda *args, **kwargs: (hits.append(type(module).__name__), graph(*args, **kwargs))[1]

    monkeypatch.setattr(fast_path, "_zerogpu_bind", bind)  # what enable_fast_path(compile=<compiled>) binds with
    pipe.enable_fast_path(compile=exported)
    blocks = [m for m in pipe.transformer.blocks]
    assert pipe._fast_path.compiled and all(isinstance(b.forward, CompiledBlock) for b in blocks)
    out = _frames(pipe)
    assert hits.count("FlowDiTBlock") >= 2 * len(blocks)  # each block ran its graph, every step
    assert np.abs(out.astype(int) - eager.astype(int)).max() <= 1  # the same frames, within one uint8 level


def test_a_call_of_another_shape_runs_eager():
    """A compiled graph serves only the shape it was exported at; any other call goes to the block's own forward."""
    calls = []
    block = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    compiled = CompiledBlock(block, {fast_path.call_signature((x,), {}): lambda *a: calls.append(a) or "graph"})
    assert compiled(torch.randn(2, 4)) == "graph" and len(calls) == 1
    y = torch.randn(3, 4)
    assert torch.equal(compiled(y), block(y)) and len(calls) == 1


@pytest.mark.gpu
def test_zerogpu_aoti_compile_gives_the_eager_frames_on_cuda():
    """`spaces.aoti_compile` (what ZeroGPU runs) of the tiny pipeline's blocks, applied by `enable_fast_path`."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pipe = _pipe("cuda")
    pipe.enable_fast_path(compile=False, cuda_graphs=False, overlap_decode=False)
    eager = _frames(pipe)
    compiled = fast_path.aoti_compile_repeated_blocks(pipe, lambda: pipe.warm_up(num_inference_steps=2))
    pipe.enable_fast_path(compile=compiled, cuda_graphs=False, overlap_decode=False)
    assert np.abs(_frames(pipe).astype(int) - eager.astype(int)).max() <= 1


def test_the_space_compiles_on_zerogpu_at_the_pages_block_sizes(monkeypatch):
    """app.zerogpu_fast_path: one GPU call records warm-ups at File's and Talk's block sizes on static-shape caches
    and compiles; the main process applies the result through the fast path, CUDA graphs off."""
    import app

    pipe, runs = _pipe(), []

    def compile_fake(pipe_, run):
        assert pipe_ is pipe and pipe._fast_path is not None and not pipe._fast_path.compiled  # static shapes
        sizes = []
        monkeypatch.setattr(pipe, "warm_up", lambda block_size=None, **kw: sizes.append(block_size))
        run()
        runs.append(sorted(sizes))
        return {}

    monkeypatch.setattr(app, "aoti_compile_repeated_blocks", compile_fake)
    app.zerogpu_fast_path(pipe)
    expected = sorted({int(pipe.transformer.config.block_size), app.default_block_size(pipe)})
    assert runs == [expected] and pipe._fast_path is not None and not pipe._fast_path.cuda_graphs
