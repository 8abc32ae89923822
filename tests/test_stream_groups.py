"""Streams joining and leaving a batched group between blocks get exactly (torch.equal) the frames they get alone.

Why exact is possible on the CPU: each stream keeps its own KV cache (G attends per stream) and decoder caches, and
the batched kernels give each row what it gets alone: oneDNN convolutions at any batch size, MKL GEMMs from 8 rows
on (`transformer.rowwise` pads the per-frame embedders). The tiny preset's latent is one pixel, so its GEMMs have
R x k rows per stream: block size 4 gives multiples of 4 rows, which MKL computes alike alone and batched (at block
size 2, 6 rows, it does not: the group tests in test_pipeline.py allow one level there). The demo model (2 x 2
latent pixels) is exact at every block size (measured).
"""

import numpy as np
import pytest
import torch

from portrait_rt.constants import SAMPLE_RATE, SAMPLES_PER_FRAME, video_frames_for_latents
from portrait_rt.models.transformer import FlowDiT
from portrait_rt.presets import TRANSFORMER_PRESETS

from .conftest import perturb_, speech_like

KW = {"num_inference_steps": 1, "block_size": 4, "kv_window": 12}  # a window of 3 blocks: resets every 2 blocks
PIECE = 4 * SAMPLES_PER_FRAME  # 4 video frames of audio per feed


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _pieces(x, n=PIECE):
    return [(x[i : i + n], SAMPLE_RATE) for i in range(0, x.size, n)]


@torch.no_grad()
def test_caches_at_different_window_positions_run_batched_as_alone():
    """`forward_cached` / `update_cache` over a list of caches (one per stream, each at its own window position, one
    of them resetting) equal each cache's passes alone, bit for bit; the 2 x 3 latent gives the per-frame embedders
    6 rows per stream (the padded `rowwise` path)."""
    cfg = TRANSFORMER_PRESETS["tiny"]
    torch.manual_seed(0)
    dit = perturb_(FlowDiT(**cfg), std=0.2).eval()
    k, (h, w), rows = cfg["block_size"], (2, 3), 3
    g = torch.Generator().manual_seed(0)

    def new_cache():
        cache = dit.init_kv_cache(rows, 1, (h, w))
        dit.prefill_references(cache, torch.randn(rows, 1, 64, h, w, generator=torch.Generator().manual_seed(1)))
        return cache

    def block(first):
        frames = video_frames_for_latents(k, first=first)
        return torch.randn(rows, 64, k, h, w, generator=g), torch.randn(rows, frames, cfg["audio_dim"], generator=g)

    alone, batched = [new_cache(), new_cache()], [new_cache(), new_cache()]
    for cache_pair in (alone, batched):  # stream 0 runs two blocks before stream 1 starts
        g.manual_seed(2)
        for _ in range(2):
            x, a = block(first=cache_pair[0].stream_start)
            dit.update_cache(cache_pair[0], x, a)
        x, a = block(first=True)
        dit.update_cache(cache_pair[1], x, a)
    assert alone[0].num_latent_frames != alone[1].num_latent_frames
    t = torch.full((rows,), 700.0)
    for _ in range(4):  # the first cache resets on the way (window of 4 latent frames = 2 blocks)
        x0, a0 = block(first=False)
        x1, a1 = block(first=False)
        solo = [dit.forward_cached(alone[0], x0, t, a0), dit.forward_cached(alone[1], x1, t, a1)]
        both = dit.forward_cached(batched, torch.cat([x0, x1]), torch.cat([t, t]), torch.cat([a0, a1]))
        assert torch.equal(both, torch.cat(solo))
        dit.update_cache(alone[0], x0, a0)
        dit.update_cache(alone[1], x1, a1)
        dit.update_cache(batched, torch.cat([x0, x1]), torch.cat([a0, a1]))
        assert [c.num_latent_frames for c in batched] == [c.num_latent_frames for c in alone]
    with pytest.raises(ValueError, match="first block"):
        dit.forward_cached([new_cache(), batched[0]], torch.cat([x0, x1]), torch.cat([t, t]), torch.cat([a0, a1]))


def test_streams_join_and_leave_a_group_between_blocks(tiny_pipe, portraits, monkeypatch):
    """A runs alone; B joins 16 frames in (its first block, 13 frames, runs beside A's 2nd, then they batch), C 32
    frames in; A ends (flush) while B and C go on. Every stream's frames equal its run alone, bit for bit, at other
    window positions than theirs alone would meet, and the steps really ran batched (several streams per decode)."""
    clips = [speech_like(s, seed=i) for i, s in enumerate((2.8, 2.4, 1.6))]
    alone = []
    for i, x in enumerate(clips):
        stream = tiny_pipe.start_stream(portraits[i : i + 1], generator=_gen(i), **KW)
        blocks = [r.frames for chunk in _pieces(x) for r in tiny_pipe.feed(stream, *chunk)]
        alone.append(np.concatenate(blocks + [r.frames for r in tiny_pipe.flush(stream)]))

    decode, batch_sizes = tiny_pipe.vae.decode_chunk, []

    def counting_decode(z, f_c, cache=None):
        batch_sizes.append(z.shape[0])
        return decode(z, f_c, cache=cache)

    monkeypatch.setattr(tiny_pipe.vae, "decode_chunk", counting_decode)
    streams = [tiny_pipe.start_stream(portraits[i : i + 1], generator=_gen(i), **KW) for i in range(3)]
    group, pieces, got = streams[0].group, [_pieces(x) for x in clips], [[], [], []]
    joins = {4: 1, 8: 2}  # after n pieces of A's audio, stream j joins: their blocks end with A's
    for n in range(100):
        if not any(pieces):
            break
        if n in joins:
            group.join(streams[joins[n]])
        chunks = [pieces[i].pop(0) if pieces[i] and streams[i].group is group else None for i in range(3)]
        chunks = [chunks[i] for i, s in enumerate(streams) if s in group.streams]
        for stream, records in zip(group.streams, tiny_pipe.feed_group(group, chunks, lockstep=False)):
            got[streams.index(stream)] += [r.frames for r in records]
        for i, stream in enumerate(streams):
            if not pieces[i] and stream in group.streams:
                got[i] += [r.frames for r in tiny_pipe.flush(stream)]  # leaves the group, the others go on
    assert all(s.finished for s in streams) and max(batch_sizes) == 3
    for i in range(3):
        assert np.array_equal(np.concatenate(got[i]), alone[i]), f"stream {i}"


def test_a_group_takes_only_streams_of_its_settings(tiny_pipe, portraits):
    group = tiny_pipe.start_streams([portraits[:1]], **KW)
    with pytest.raises(ValueError, match="settings"):
        group.join(tiny_pipe.start_stream(portraits[:1], **{**KW, "num_inference_steps": 3}))
    with pytest.raises(ValueError, match="number of reference images"):
        group.join(tiny_pipe.start_stream(portraits[:2], **KW))


def test_without_lockstep_a_silent_stream_does_not_hold_the_others(tiny_pipe, portraits):
    group = tiny_pipe.start_streams([portraits[:1], portraits[1:2]], **KW)
    x = speech_like(1.5)  # 37 frames: 2 blocks (13 + 16, with the encoder's look-ahead)
    lockstep = tiny_pipe.feed_group(group, [(x, SAMPLE_RATE), None])
    assert [len(r) for r in lockstep] == [0, 0]  # the second stream has no audio: nobody runs
    free = tiny_pipe.feed_group(group, [None, None], lockstep=False)
    assert len(free[0]) >= 2 and free[1] == []
