"""PortraitRTPipeline: reference images + speech -> talking-portrait video, offline or streamed (Algorithm 2).

    pipe = PortraitRTPipeline.from_pretrained("assets/portrait-rt-demo")
    out = pipe(reference_images=["me.png"], audio="speech.wav")              # out.frames: uint8 (T, H, W, 3)
    for frames in pipe.stream(["me.png"], microphone_chunks):                # uint8 (t, H, W, 3) per block
        ...
    stream = pipe.start_stream(["me.png"])                                   # or block by block, with the audio:
    for block in pipe.feed(stream, samples, sample_rate): ...                # BlockRecord: frames, audio, timing
    for block in pipe.flush(stream): ...                                     # the end: the last partial block

One block loop (`_run_blocks`) serves every entry point: `__call__` feeds one stream the whole clip, `stream()` feeds
it chunk by chunk, `feed_group` steps a group of streams batched; a single stream is a group of one
(`portrait_rt.streaming` holds the state). Streams join and leave a group between blocks (`StreamGroup.join` /
`leave`); each gets exactly the frames it gets alone. Per block of k latent frames (16 video frames for k = 4; 13 for a
stream's first block):
1. the block's audio: model-rate samples and audio-encoder features, per 25 fps frame (`StreamAudio.take_block`);
2. `num_inference_steps` Euler steps of rectified flow with G reading the KV cache (all CFG rows of all streams
   batched), combined by equation (I) (`cfg_combine`);
3. one pass of G at t = 0 on the clean block, the only pass that writes the KV cache (window reset inside G);
4. the causal VAE decoder turns every stream's block into frames in one call, carrying their convolution caches;
5. a `BlockRecord` per stream: the frames, the audio that drove them, the timing.

So `__call__`, `stream()` and any chunking of the audio agree frame for frame given the same seed. `__call__` follows
diffusers' conventions: `output_type` ("np" | "pil" | "pt" | "latent"), `return_dict`, `latents` (the first blocks'
noise), `callback_on_step_end` with `callback_on_step_end_tensor_inputs` (of `_callback_tensor_inputs`) and
`interrupt`; the run settings travel as one `StreamSettings` (`stream_settings`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from diffusers.video_processor import VideoProcessor

from portrait_rt.audio import is_silent, read_mono
from portrait_rt.constants import SAMPLE_RATE, SAMPLES_PER_FRAME, SPATIAL_COMPRESSION
from portrait_rt.faces import PasteBack, align_references
from portrait_rt.fast_path import CachedStepGraphs, FastPathSettings, apply_compiled_blocks, compile_repeated_blocks
from portrait_rt.hub import load_components, model_class, saveable_configs
from portrait_rt.images import frames_to_tensor, tensor_to_frames
from portrait_rt.presets import PRESET_CLASSES, get_preset
from portrait_rt.streaming import (
    BlockAudio,
    BlockRecord,
    BlockTiming,
    Stream,
    StreamAudio,
    StreamGroup,
    StreamSettings,
    select_batch,
    stack_batch,
)


@dataclass
class PortraitRTPipelineOutput(BaseOutput):
    """frames: uint8 (T, H, W, 3) at 25 fps (the photo's size with `paste_back`, else the model's), or as
    `output_type` asks: a list of PIL images, a float tensor (T, 3, H, W) in [0, 1], the latents; audio: the mono
    float32 audio (at `sample_rate`) that drove them; timings: one `BlockTiming` per block; crops: uint8
    (T, res, res, 3), the model's own square frames."""

    frames: np.ndarray | torch.Tensor | list
    audio: np.ndarray
    sample_rate: int
    timings: list[BlockTiming]
    crops: np.ndarray | None = None


def cfg_combine(v: torch.Tensor, settings: StreamSettings) -> torch.Tensor:
    """Equation (I) over one stream's CFG rows `settings.cfg_rows` (in that order), with G_f, G_na, G_nr the full,
    no-audio and no-reference rows: G = la (G_f - G_na) + lr (G_f - G_nr) - G_f + G_na + G_nr, la and lr the
    settings' `guidance_audio` and `guidance_reference` (a row left out has a scale of 1: its terms cancel).
    """
    full = v[:1]
    out = full
    for row, (drop_audio, _) in zip(v[1:], settings.cfg_rows[1:]):
        scale = settings.guidance_audio if drop_audio else settings.guidance_reference
        out = out + (scale - 1.0) * (full - row)
    return out


@dataclass
class _PendingBlock:
    """A generated block whose decode may still run (on `decode_stream`); `records()` waits for it."""

    video: torch.Tensor  # (streams, 3, n, H, W)
    decode_stream: torch.cuda.Stream | None
    latents: torch.Tensor  # kept alive until the decode, on another stream, has read them
    streams: list[Stream]
    audio: list[BlockAudio]
    blocks: list[int]  # per stream: its block index ...
    first_frames: list[int]  # ... and the index of the block's first video frame
    start: float  # perf_counter at the block's start
    decode_start: float  # ... when its decode was queued
    step_ms: dict[str, float]  # denoise_ms, kv_ms
    keep_video: bool = False  # the records carry `video` too

    def records(self) -> list[tuple[Stream, BlockRecord]]:
        with torch.cuda.stream(self.decode_stream):  # the copy to the host waits for the decode stream only
            frames = tensor_to_frames(self.video.transpose(1, 2))  # (streams, n, H, W, 3)
        end = time.perf_counter()
        step = {**self.step_ms, "decode_ms": (end - self.decode_start) * 1e3}
        latency_ms = (end - self.start) * 1e3
        return [
            (
                stream,
                stream.present(
                    BlockRecord(
                        frames=frames[i],
                        audio=a.samples,
                        first_frame=first,
                        timing=BlockTiming(
                            block, frames.shape[1], audio_ms=a.encode_ms, latency_ms=a.encode_ms + latency_ms, **step
                        ),
                        latents=self.latents[i : i + 1],
                        video=self.video[i] if self.keep_video and stream.paste_back is None else None,
                    )
                ),
            )
            for i, (stream, a, block, first) in enumerate(
                zip(self.streams, self.audio, self.blocks, self.first_frames)
            )
        ]


class PortraitRTPipeline(DiffusionPipeline):
    """Audio-driven talking portraits from 1-3 reference images (the paper's VAE + blockwise autoregressive DiT).

    Components: `vae` (`CausalVideoVAE`), `transformer` (`FlowDiT`), `audio_encoder` (the built-in `AudioEncoder`
    or `PretrainedAudioEncoder`, a frozen Whisper / wav2vec2), `scheduler` (`FlowMatchEulerDiscreteScheduler`,
    shift 5). This module names the models only by class name (`portrait_rt.hub.model_class`), never imports them, so
    the pipeline's published code holds none of theirs (`export --hub-folder`).
    """

    model_cpu_offload_seq = "audio_encoder->transformer->vae"

    def __init__(
        self,
        vae: ModelMixin,
        transformer: ModelMixin,
        audio_encoder: ModelMixin,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        super().__init__()
        self.register_modules(vae=vae, transformer=transformer, audio_encoder=audio_encoder, scheduler=scheduler)
        self._fast_path: FastPathSettings | None = None  # `enable_fast_path`
        self._interrupt = False  # set by a `callback_on_step_end` to stop `__call__` after the current block
        self.video_processor = VideoProcessor(vae_scale_factor=SPATIAL_COMPRESSION)  # `output_type` "pt" / "pil"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> PortraitRTPipeline:
        """A pipeline folder or Hub id, loaded with this library's classes (`dtype`, `variant`, ... go to each model).

        An exported folder also carries its own copy of this code for `DiffusionPipeline.from_pretrained(folder,
        trust_remote_code=True)` without portrait_rt; that copy is not run here (`portrait_rt.hub`).
        """
        return cls(**load_components(pretrained_model_name_or_path, **kwargs))

    @classmethod
    def from_preset(cls, name: str, **scheduler_kwargs) -> PortraitRTPipeline:
        """A randomly initialised pipeline of preset `name` ("tiny" | "demo" | "paper"), built offline.

        Under `with torch.device("meta"):` nothing is allocated (for parameter counts of the paper preset).
        """
        cfg = get_preset(name)
        scheduler = FlowMatchEulerDiscreteScheduler(**{**cfg["scheduler"], **scheduler_kwargs})
        components = {part: model_class(class_name)(**cfg[part]) for part, class_name in PRESET_CLASSES.items()}
        for module in components.values():
            module.eval()  # as from_pretrained leaves them
        return cls(scheduler=scheduler, **components)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """diffusers' `save_pretrained` (configs and safetensors), without the config keys that name this machine's
        folders or code the folder does not carry (`portrait_rt.hub.NOT_SAVED`)."""
        with saveable_configs(self.components.values()):
            super().save_pretrained(save_directory, **kwargs)

    @property
    def resolution(self) -> int:
        return int(self.vae.config.resolution)

    def enable_fast_path(
        self,
        compile: bool | dict = True,
        backend: str = "inductor",
        cuda_graphs: bool | None = None,
        overlap_decode: bool | None = None,
    ) -> None:
        """The fast path (`portrait_rt.fast_path`), in one call, for streams started after it; eager is the reference
        it is tested against. Call after moving the pipeline to its device.

        Static-shape KV caches always; regional compilation of G's and the VAE's repeated blocks with `compile`;
        CUDA graphs of G's cached passes and decode of block i overlapped with G of block i + 1 on a second CUDA
        stream, both by default on CUDA only (`overlap_decode=True` on the CPU keeps the order, not the gain).
        Every shape compiles and every group captures its graphs on first use: see `warm_up`. On ZeroGPU, where
        torch.compile does not run, pass as `compile` the blocks `fast_path.aoti_compile_repeated_blocks` compiled
        ahead of time.
        """
        cuda = self._execution_device.type == "cuda"
        cuda_graphs = cuda if cuda_graphs is None else cuda_graphs and cuda
        overlap_decode = cuda if overlap_decode is None else overlap_decode
        if isinstance(compile, dict):
            apply_compiled_blocks(self, compile)
        elif compile:
            compile_repeated_blocks(self, backend=backend)
        self.transformer.set_cached_step_runner(CachedStepGraphs() if cuda_graphs else None)
        stream = torch.cuda.Stream(self._execution_device) if overlap_decode and cuda else None
        self._fast_path = FastPathSettings(bool(compile), cuda_graphs, overlap_decode, stream)

    @torch.no_grad()
    def warm_up(
        self, num_streams: int = 1, num_references: int = 1, *, settings: StreamSettings | None = None, **options
    ) -> float:
        """Run a throwaway group of `num_streams` through one KV window and past its reset (every window position,
        first block and re-feed), so that the groups of that size that follow run compiled code from their first
        block. Returns the seconds it took. `settings` / `options`: the run settings, as for `start_streams`."""
        start = time.perf_counter()
        res = self.resolution
        refs = [np.full((res, res, 3), 128, np.uint8)] * num_references
        group = self.start_streams([refs] * num_streams, settings=settings, **options)
        blocks = group.settings.kv_window // group.settings.block_size + 1
        frames = sum(group.streams[0].position.block_video_frames(i) for i in range(blocks))
        frames += self.audio_encoder.config.lookahead_frames
        noise = np.random.default_rng(0).standard_normal(frames * SAMPLES_PER_FRAME).astype(np.float32) * 0.1
        self.feed_group(group, [(noise, SAMPLE_RATE)] * num_streams)
        if self._execution_device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    # ------------------------------------------------------------------ settings
    def stream_settings(self, settings: StreamSettings | None = None, **options) -> StreamSettings:
        """The run settings every entry point uses, checked once: `settings` (default: `StreamSettings()`) with
        `options` (its fields by name: `guidance_audio=3.0`, ...) set, `block_size` / `kv_window` left at None
        filled from the transformer's config. `ValueError` names the field and what to change."""
        if settings is None or options:
            unknown = sorted(set(options) - set(StreamSettings.names()))
            if unknown:
                raise TypeError(f"Unknown setting(s) {unknown}; the run settings are {list(StreamSettings.names())}.")
            settings = StreamSettings(**options) if settings is None else dataclasses.replace(settings, **options)
        if settings.block_size is None or settings.kv_window is None:  # the model's own
            config = self.transformer.config
            settings = dataclasses.replace(
                settings,
                block_size=config.block_size if settings.block_size is None else settings.block_size,
                kv_window=config.kv_window if settings.kv_window is None else settings.kv_window,
            )
        return settings

    # ------------------------------------------------------------------ streaming API
    @torch.no_grad()
    def start_streams(
        self,
        reference_images: list,
        generators: list[torch.Generator | None] | None = None,
        *,
        settings: StreamSettings | None = None,
        **options,
    ) -> StreamGroup:
        """Algorithm 2, step 1, for a group of streams that run batched: every block of `feed_group` is one forward
        of G per Euler step over all their CFG rows, and one VAE decode.

        `reference_images`: per stream, 1-3 paths / PIL images / arrays / `FaceAlignment`s (the same number for
        every stream); photos are aligned on their faces and pasted back as `align_faces` / `paste_back` say.
        `generators`: one per stream (or None). Precomputes f_c = E1(I_r), z_r = E(I_r) and KV_r, each stream's
        alone. The run settings (`settings` and/or `StreamSettings` fields by name, see `stream_settings`) hold for
        the group's life.
        """
        settings = self.stream_settings(settings, **options)
        generators = generators or [None] * len(reference_images)
        if not reference_images or len(generators) != len(reference_images):
            raise ValueError("Give one list of reference images per stream (at least one), and one generator each.")
        aligned = [  # each reference on its own face (`portrait_rt.faces`), or as the settings say
            align_references(images, self.resolution, bool(settings.align_faces), settings.align_faces == "require")
            for images in reference_images
        ]
        refs = [np.stack([a.crop for a in alignments]) for alignments in aligned]  # (M, H, W, 3) each
        if len({r.shape[0] for r in refs}) > 1:
            raise ValueError("Streams batched in one group need the same number of reference images.")
        streams = tuple(self._new_stream(r, g, settings, a) for r, g, a in zip(refs, generators, aligned))
        return StreamGroup(settings, streams, copy.deepcopy(self.scheduler))

    def _new_stream(self, references: np.ndarray, generator, settings: StreamSettings, alignments) -> Stream:
        """A stream's own state: f_c for the decoder's Dref, z_r (normalised like every latent G sees) -> KV_r in its
        own KV cache (its CFG rows). Each stream alone, so that it starts the same whoever starts with it."""
        device, dtype = self._execution_device, self.transformer.dtype
        images = frames_to_tensor(references[None]).to(device, self.vae.dtype)  # (1, M, 3, H, W) in [-1, 1]
        f_c, z_r = self.vae.encode_reference(images)
        z_r = (z_r - self.vae.config.shift_factor) * self.vae.config.scaling_factor
        rows, h = settings.num_cfg_rows, self.resolution // SPATIAL_COMPRESSION
        cache = self.transformer.init_kv_cache(
            rows,
            references.shape[0],
            (h, h),
            kv_window=settings.kv_window,
            block_size=settings.block_size,
            device=device,
            dtype=dtype,
            static_shapes=self._fast_path is not None,
        )
        drop_reference = torch.tensor([drop for _, drop in settings.cfg_rows], device=device)
        self.transformer.prefill_references(
            cache, z_r.to(dtype).repeat_interleave(rows, dim=0), drop_reference=drop_reference
        )
        return Stream(
            references,
            StreamAudio(self.audio_encoder.init_stream_state(1)),
            generator,
            settings,
            kv_cache=cache,
            reference_features=f_c,
            alignments=tuple(alignments),
            paste_back=PasteBack(alignments[0]) if settings.paste_back and alignments[0].face_found else None,
        )

    def start_stream(
        self,
        reference_images,
        *,
        generator: torch.Generator | None = None,
        settings: StreamSettings | None = None,
        **options,
    ) -> Stream:
        """One stream (a group of one): `reference_images` are 1-3 paths / PIL images / arrays; the run settings as
        for `start_streams`."""
        return self.start_streams([reference_images], [generator], settings=settings, **options).streams[0]

    @torch.no_grad()
    def feed(self, stream: Stream, samples: np.ndarray, sample_rate: int) -> Iterator[BlockRecord]:
        """Add an audio chunk (any size, dtype and rate) and yield a `BlockRecord` for every block it completes."""
        if stream.finished:
            raise ValueError("This stream has been flushed; start a new one with start_stream().")
        if len(stream.group.streams) > 1:
            raise ValueError("This stream runs in a group; feed it with feed_group(group, chunks).")
        for ((_, record),) in self._run_blocks(stream.group, [(samples, sample_rate)]):
            yield record

    @torch.no_grad()
    def feed_group(
        self, group: StreamGroup, chunks: list[tuple[np.ndarray, int] | None], lockstep: bool = True
    ) -> list[list[BlockRecord]]:
        """Add one audio chunk `(samples, sample_rate)` per stream (None: nothing new) and run every block all the
        streams can run, batched. Returns the new `BlockRecord`s per stream. End a stream with `flush(stream)`.

        `lockstep=False`: a block runs for every stream whose next block's audio is there, without waiting for the
        others (a live server decides itself when to run: `portrait_rt.serving.worker`)."""
        if len(chunks) != len(group.streams):
            raise ValueError(
                f"Give one chunk (or None) per stream: the group has {len(group.streams)}, got {len(chunks)}."
            )
        index = {stream: i for i, stream in enumerate(group.streams)}
        out: list[list[BlockRecord]] = [[] for _ in group.streams]
        for records in self._run_blocks(group, chunks, lockstep=lockstep):
            for stream, record in records:
                out[index[stream]].append(record)
        return out

    def block_ready(self, stream: Stream) -> bool:
        """Whether the audio of `stream`'s next block is there (encoding what it needs: the block loop takes it)."""
        first, n = stream.position.video_frames, stream.position.block_video_frames()
        return stream.audio.take_block(first, n, self.audio_encoder) is not None

    @torch.no_grad()
    def flush(self, stream: Stream) -> Iterator[BlockRecord]:
        """End of the stream's audio: pad its last partial block with silence, generate it, trim it to the audio.

        A stream of a group leaves the group first (the others go on); then it runs as a group of one.
        """
        if stream.finished:
            return
        group = stream.group if len(stream.group.streams) == 1 else stream.group.leave(stream)
        audio_frames = stream.audio.close()  # video frames the audio covers
        # Silence up to the end of the block holding the last frame: the model sees a speaker falling quiet.
        stream.audio.pad_to(stream.position.block_end(audio_frames))
        for ((_, record),) in self._run_blocks(group, final=True):
            keep = audio_frames - record.first_frame
            if keep > 0:
                record.trim(keep)
                yield record
        stream.finished = True

    def stream(
        self,
        reference_images,
        audio_chunks: Iterable[tuple[np.ndarray, int]],
        *,
        generator: torch.Generator | None = None,
        settings: StreamSettings | None = None,
        **options,
    ) -> Iterator[np.ndarray]:
        """Generator of uint8 frames (t, H, W, 3), one array per block, as audio chunks `(samples, rate)` arrive.

        The frames of each block's `BlockRecord`; for the records themselves (the audio that drove the frames and
        the timing too), use `start_stream` / `feed` / `flush`, which this is built on. The run settings as for
        `start_streams` (`guidance_audio=`, `guidance_reference=`, `num_inference_steps=`, ... or `settings=`).
        """
        stream = self.start_stream(reference_images, generator=generator, settings=settings, **options)
        for samples, rate in audio_chunks:
            for record in self.feed(stream, samples, rate):
                yield record.frames
        for record in self.flush(stream):
            yield record.frames

    # ------------------------------------------------------------------ the block loop (Algorithm 2, steps 2-4)
    def _run_blocks(
        self,
        group: StreamGroup,
        chunks: list[tuple[np.ndarray, int] | None] | None = None,
        final: bool = False,
        lockstep: bool = True,
    ) -> Iterator[list[tuple[Stream, BlockRecord]]]:
        """The one block loop: add `chunks` (one per stream, or None), then, while every stream of `group` has its
        next block's audio (without `lockstep`: while any has), generate that block for all of them at once: streams
        at their first block batched apart from the others. With `final` (flush) the audio has ended. Yields the
        (stream, record) pairs of each step.

        With the fast path's decode overlap, block i is yielded once G of block i + 1 is queued (if its audio is
        there; else at once): the GPU decodes one block while it denoises the next."""
        for stream, chunk in zip(group.streams, chunks or []):
            if chunk is not None:
                stream.audio.push(*chunk)
        overlap = self._fast_path is not None and self._fast_path.overlap_decode
        pending: list[_PendingBlock] = []  # the previous step's blocks, still decoding (decode overlap)
        while True:
            ready = []
            for stream in group.streams:
                first, n = stream.position.video_frames, stream.position.block_video_frames()
                audio = stream.audio.take_block(first, n, self.audio_encoder, final)
                if audio is not None:
                    ready.append((stream, audio))
            if not ready or (lockstep and len(ready) < len(group.streams)):
                break
            starting = [(s, a) for s, a in ready if s.position.block_index == 0]
            going = [(s, a) for s, a in ready if s.position.block_index > 0]
            blocks = [self._generate_block(group, *zip(*batch)) for batch in (starting, going) if batch]
            if pending:  # G of this step is queued: the GPU runs it while the last decode finishes
                yield [pair for block in pending for pair in block.records()]
            pending = blocks
            if not overlap:
                yield [pair for block in pending for pair in block.records()]
                pending = []
        if pending:
            yield [pair for block in pending for pair in block.records()]

    def _generate_block(self, group: StreamGroup, streams: tuple[Stream, ...], audio: tuple[BlockAudio, ...]):
        """Algorithm 2 steps 2-4 for the next block of `streams` (all at their first block, or none): one forward of
        G over all their CFG rows per Euler step (attention per stream, over its own KV cache), the t = 0 KV pass,
        one decode with their decoder caches stacked. The work is queued (on CUDA, the decode on the fast path's
        decode stream); `records()` of the result waits for it."""
        start = time.perf_counter()
        dit, vae, settings = self.transformer, self.vae, group.settings
        rows, device, dtype = settings.num_cfg_rows, self._execution_device, dit.dtype
        h = w = self.resolution // SPATIAL_COMPRESSION
        features = torch.cat([a.features for a in audio]).to(device, dtype)  # (streams, n, D)
        features = features.repeat_interleave(rows, dim=0)  # (streams * rows, n, D)
        drop_audio = group.drop_audio(len(streams))
        caches = [s.kv_cache for s in streams]

        # 2. Denoising: Euler steps of the rectified-flow ODE from noise (t = 1) to data (t = 0); each stream's noise.
        shape = (1, dit.config.in_channels, settings.block_size, h, w)
        latents = torch.cat([s.next_noise(shape, device, dtype) for s in streams])  # (streams, C, k, h, w)
        group.scheduler.set_timesteps(settings.num_inference_steps, device=device)
        for i, t in enumerate(group.scheduler.timesteps):
            x = latents.repeat_interleave(rows, dim=0)  # (streams * rows, C, k, h, w)
            v = dit.forward_cached(caches, x, t.expand(x.shape[0]).to(dtype), features, drop_audio=drop_audio)
            v = torch.cat([cfg_combine(vs, settings) for vs in v.split(rows)])  # (streams, C, k, h, w)
            latents = group.scheduler.step(v, t, latents, return_dict=False)[0]
            if group.on_step_end is not None:  # diffusers' callback_on_step_end: it may replace these tensors
                out = group.on_step_end(self, i, t, {"latents": latents, "audio_features": features})
                latents, features = out.pop("latents", latents), out.pop("audio_features", features)
        t1 = time.perf_counter()

        # 3. The t = 0 pass on the clean block: the only pass that writes the KV cache.
        dit.update_cache(caches, latents.repeat_interleave(rows, dim=0), features, drop_audio=drop_audio)
        t2 = time.perf_counter()

        # 4. Causal decoding of all streams at once, with their reference features, carrying their decoder caches.
        decode_stream = self._fast_path.decode_stream if self._fast_path is not None else None
        if decode_stream is not None:
            decode_stream.wait_stream(torch.cuda.current_stream(device))  # the latents are ready
        with torch.cuda.stream(decode_stream):  # None: the current stream
            z = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
            f_c = torch.cat([s.reference_features for s in streams])  # (streams, M, C, h, w)
            cache = stack_batch([s.decoder_cache for s in streams])
            video, cache = vae.decode_chunk(z, f_c, cache=cache)
        for i, stream in enumerate(streams):
            stream.decoder_cache = select_batch(cache, i)

        blocks = [s.position.block_index for s in streams]
        first_frames = [s.position.video_frames for s in streams]
        for s in streams:
            s.position.advance()
        step = {"denoise_ms": (t1 - start) * 1e3, "kv_ms": (t2 - t1) * 1e3}
        streams, audio = list(streams), list(audio)
        return _PendingBlock(
            video, decode_stream, latents, streams, audio, blocks, first_frames, start, t2, step, group.keep_video
        )

    # ------------------------------------------------------------------ offline
    _callback_tensor_inputs = ["latents", "audio_features"]
    OUTPUT_TYPES = ("np", "pil", "pt", "latent")

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` in a `callback_on_step_end` to stop `__call__` after the current block."""
        return self._interrupt

    @torch.no_grad()
    def __call__(
        self,
        reference_images,
        audio,
        *,
        generator: torch.Generator | None = None,
        settings: StreamSettings | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        **options,
    ) -> PortraitRTPipelineOutput | tuple:
        """Generate the whole video for `audio` (a path or `(samples, sample_rate)`): one stream fed the whole clip.

        Args:
            reference_images: 1-3 portraits (paths, PIL images or arrays) of the person to animate.
            audio: the speech, a path or `(samples, sample_rate)`.
            generator: draws each block's initial noise (after `latents`, if given).
            settings / **options: the run settings, a `StreamSettings` and/or its fields by name
                (`guidance_audio=2.0`, `guidance_reference=2.0`, `num_inference_steps=12`, `block_size`, `kv_window`).
            latents: the initial noise (t = 1) of the first blocks, (1, C, L, h, w) with L a multiple of the block
                size: block i starts from latent frames [i k, (i + 1) k); the blocks after them draw theirs from
                `generator`. Noise drawn block by block from a generator (`randn_tensor((1, C, k, h, w), generator)`
                per block, concatenated on dim 2) gives the frames that generator would.
            output_type: "np" (default: uint8 (T, H, W, 3)), "pil" (a list of T PIL images), "pt" (float
                (T, 3, H, W) in [0, 1]; "pil" and "pt" through diffusers' `VideoProcessor` from the decoder's float
                output), or "latent" (the denoised latents (1, C, L, h, w) of every block, normalised as G sees them:
                `vae.decode(z / scaling_factor + shift_factor)` gives pixels; the blocks are still decoded, since a
                block's decode is part of the stream's step).
            return_dict: `PortraitRTPipelineOutput` if True, else the tuple `(frames, audio)`.
            callback_on_step_end: called after every Euler step of every block as
                `callback(pipe, step, timestep, callback_kwargs)`, `step` counting the block's steps from 0 (as
                diffusers counts a denoising loop); `callback_kwargs` holds the tensors named in
                `callback_on_step_end_tensor_inputs` (of `_callback_tensor_inputs`: "latents" (1, C, k, h, w),
                "audio_features" (CFG rows, n, D)); the dict it returns replaces them. `pipe._interrupt = True` stops
                the generation after the current block (the frames so far are returned).

        Returns `PortraitRTPipelineOutput(frames, audio, sample_rate, timings, crops)`: T = ceil(audio length / 40 ms)
        frames at 25 fps; `audio` is the clip at the model rate, as the stream resampled it; a photo's frames are the
        photo with the face pasted back (`paste_back`; "pt" / "pil" then convert those uint8 frames), `crops` the
        model's square frames. For long clips, `generate_blocks` hands over one block at a time instead of holding
        every frame.
        """
        if output_type not in self.OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}; use one of {list(self.OUTPUT_TYPES)}.")
        blocks = self.generate_blocks(
            reference_images,
            audio,
            generator=generator,
            settings=settings,
            latents=latents,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            keep_video=output_type in ("pt", "pil"),
            **options,
        )
        records = list(blocks)
        audio = np.concatenate([r.audio for r in records])
        if output_type == "latent":
            frames = torch.cat([r.latents for r in records], dim=2)  # (1, C, L, h, w)
        elif output_type == "np":
            frames = np.concatenate([r.frames for r in records])  # uint8 (T, H, W, 3)
        else:
            # The decoder's float output; a photo's pasted-back frames are uint8 only.
            parts = [r.video if r.video is not None else frames_to_tensor(r.frames).movedim(0, 1) for r in records]
            video = torch.cat(parts, dim=1)[None]  # (1, 3, T, H, W) in [-1, 1]
            frames = self.video_processor.postprocess_video(video, output_type=output_type)[0]
        if not return_dict:
            return (frames, audio)
        timings = [r.timing for r in records]
        crops = np.concatenate([r.crop for r in records])
        return PortraitRTPipelineOutput(
            frames=frames, audio=audio, sample_rate=SAMPLE_RATE, timings=timings, crops=crops
        )

    def generate_blocks(
        self,
        reference_images,
        audio,
        *,
        generator: torch.Generator | None = None,
        settings: StreamSettings | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        keep_video: bool = False,
        **options,
    ) -> Iterator[BlockRecord]:
        """`__call__` block by block: a `BlockRecord` (frames, the audio that drove them, timing) as each block is
        made, so a consumer (an mp4 writer, a metric) holds one block at a time whatever the clip's length.

        `latents`, `callback_on_step_end` and its tensor inputs as for `__call__`; with `keep_video` each record
        carries the decoder's float video too. The clip is fed to the stream a second at a time (any chunking gives
        the same frames), which keeps the stream's audio buffers small; the last record's audio ends where the clip
        ends. The settings are checked before the audio is read.
        """
        settings = self.stream_settings(settings, **options)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {unknown}; use names of {self._callback_tensor_inputs}."
            )
        latents = self._check_latents(latents, settings)
        samples, rate = read_mono(audio)
        if is_silent(samples):
            raise ValueError("The audio is silent (below -60 dBFS); give speech for the portrait to say.")
        stream = self.start_stream(reference_images, generator=generator, settings=settings)
        stream.latents, stream.group.keep_video = latents, keep_video
        if callback_on_step_end is not None:
            inputs = tuple(callback_on_step_end_tensor_inputs)

            def on_step_end(pipe, step, t, tensors):
                return callback_on_step_end(pipe, step, t, {k: tensors[k] for k in inputs}) or {}

            stream.group.on_step_end = on_step_end
        self._interrupt = False
        fed = (self.feed(stream, samples[i : i + rate], rate) for i in range(0, samples.size, rate))
        with self.progress_bar(total=-(-round(samples.size * SAMPLE_RATE / rate) // SAMPLES_PER_FRAME)) as bar:
            for record in itertools.chain(itertools.chain.from_iterable(fed), self.flush(stream)):
                if stream.audio.num_samples is not None:  # flushed: the silence padding the last block is not audio
                    record.audio = record.audio[
                        : max(0, stream.audio.num_samples - record.first_frame * SAMPLES_PER_FRAME)
                    ]
                bar.update(len(record.frames))
                yield record
                if callback_on_step_end is not None and self.interrupt:  # (only a call with a callback can be)
                    return

    def _check_latents(self, latents: torch.Tensor | None, settings: StreamSettings) -> torch.Tensor | None:
        """`latents` as `__call__` takes them, checked: (1, C, L, h, w) (or (C, L, h, w)), L a multiple of k."""
        if latents is None:
            return None
        if not isinstance(latents, torch.Tensor):
            raise ValueError(f"latents must be a torch.Tensor, got {type(latents).__name__}.")
        h = self.resolution // SPATIAL_COMPRESSION
        c, k = self.transformer.config.in_channels, settings.block_size
        latents = latents[None] if latents.ndim == 4 else latents
        if latents.ndim != 5 or latents.shape[0] != 1 or latents.shape[1] != c or latents.shape[3:] != (h, h):
            raise ValueError(f"latents must be (1, {c}, L, {h}, {h}) (L latent frames), got {tuple(latents.shape)}.")
        if latents.shape[2] == 0 or latents.shape[2] % k:
            raise ValueError(f"latents has {latents.shape[2]} latent frames; give a multiple of block_size={k}.")
        return latents
