"""PortraitRTPipeline: reference images + speech -> talking-portrait video, offline or streamed (Algorithm 2).

    pipe = PortraitRTPipeline.from_pretrained("assets/portrait-rt-demo")
    out = pipe(reference_images=["me.png"], audio="speech.wav")              # out.frames: uint8 (T, H, W, 3)
    for frames in pipe.stream(["me.png"], microphone_chunks):                # uint8 (t, H, W, 3) per block
        ...

Streaming, per block of k latent frames (16 video frames for k = 4; 13 for a stream's first block):
1. the block's audio features (built-in or pretrained audio encoder, per 25 fps frame);
2. `num_inference_steps` Euler steps of rectified flow with G reading the KV cache (CFG branches batched);
3. one pass of G at t = 0 on the clean block, the only pass that writes the KV cache (window reset inside G);
4. the causal VAE decoder turns the block into frames, carrying its convolution caches.

`__call__` is `stream()` on the whole clip, so the two agree frame for frame given the same seed.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from portrait_rt.audio import is_silent, load_audio, read_mono
from portrait_rt.constants import SAMPLE_RATE, SAMPLES_PER_FRAME, SPATIAL_COMPRESSION
from portrait_rt.hub import load_components
from portrait_rt.images import load_reference_images
from portrait_rt.models.audio_encoder import AudioEncoder
from portrait_rt.models.pretrained_audio_encoder import PretrainedAudioEncoder
from portrait_rt.models.transformer import FlowDiT
from portrait_rt.models.vae import CausalVideoVAE
from portrait_rt.presets import get_preset
from portrait_rt.streaming import BlockTiming, StreamGroup, StreamState

MAX_GUIDANCE = 20.0
MAX_STEPS = 1000


@dataclass
class PortraitRTPipelineOutput(BaseOutput):
    """frames: uint8 (T, H, W, 3) at 25 fps; audio: the mono float32 audio (at `sample_rate`) that drove them."""

    frames: np.ndarray
    audio: np.ndarray
    sample_rate: int
    timings: list[BlockTiming]


def cfg_combine(v: torch.Tensor, guidance_audio: float, guidance_reference: float) -> torch.Tensor:
    """Equation (I): G = la(Gf - Gna) + lr(Gf - Gnr) - Gf + Gna + Gnr, over the rows the stream computed.

    Rows are [full] + [no-audio if la != 1] + [no-reference if lr != 1]; a branch whose scale is 1 drops out of
    equation (I) exactly, so it is never computed.
    """
    full, rest = v[:1], list(v[1:])
    out = full
    if guidance_audio != 1.0:
        out = out + (guidance_audio - 1.0) * (full - rest.pop(0))
    if guidance_reference != 1.0:
        out = out + (guidance_reference - 1.0) * (full - rest.pop(0))
    return out


class PortraitRTPipeline(DiffusionPipeline):
    """Audio-driven talking portraits from 1-3 reference images (the paper's VAE + blockwise autoregressive DiT).

    Components: `vae` (`CausalVideoVAE`), `transformer` (`FlowDiT`), `audio_encoder` (the built-in `AudioEncoder`
    or `PretrainedAudioEncoder`, a frozen Whisper / wav2vec2), `scheduler` (`FlowMatchEulerDiscreteScheduler`,
    shift 5).
    """

    model_cpu_offload_seq = "audio_encoder->transformer->vae"

    def __init__(
        self,
        vae: CausalVideoVAE,
        transformer: FlowDiT,
        audio_encoder: AudioEncoder | PretrainedAudioEncoder,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        super().__init__()
        self.register_modules(vae=vae, transformer=transformer, audio_encoder=audio_encoder, scheduler=scheduler)

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
        components = {
            "vae": CausalVideoVAE(**cfg["vae"]),
            "transformer": FlowDiT(**cfg["transformer"]),
            "audio_encoder": AudioEncoder(**cfg["audio_encoder"]),
        }
        for module in components.values():
            module.eval()  # as from_pretrained leaves them
        return cls(scheduler=scheduler, **components)

    @property
    def resolution(self) -> int:
        return int(self.vae.config.resolution)

    def compile_streaming(self, backend: str = "inductor", mode: str | None = None, dynamic: bool = False) -> None:
        """`torch.compile` the per-block hot paths: G's cached pass and KV write, and the VAE's chunk decode.

        Shapes are static per block position (the KV cache is preallocated; attention reads the valid prefix, so a
        window has `kv_window / block_size` shapes, each compiled once), so `mode="reduce-overhead"` (CUDA graphs)
        applies on GPU. Outputs equal the eager path up to float tolerance (a test checks it with `aot_eager`).
        """
        options = {"backend": backend, "mode": mode, "dynamic": dynamic}
        self.transformer.forward_cached = torch.compile(self.transformer.forward_cached, **options)
        self.transformer.update_cache = torch.compile(self.transformer.update_cache, **options)
        self.vae.decode_chunk = torch.compile(self.vae.decode_chunk, **options)

    # ------------------------------------------------------------------ validation
    def check_inputs(
        self,
        guidance_audio: float,
        guidance_reference: float,
        num_inference_steps: int,
        block_size: int | None = None,
        kv_window: int | None = None,
    ) -> None:
        """Raise `ValueError` with what to change for out-of-range settings (images and audio are checked on load)."""
        for name, value in (("guidance_audio", guidance_audio), ("guidance_reference", guidance_reference)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
                raise ValueError(f"{name} must be a number, got {value!r}.")
            if not 0.0 <= value <= MAX_GUIDANCE:
                raise ValueError(
                    f"{name}={value} is out of range; use 0 to {MAX_GUIDANCE:g} (1 = no guidance, 2 = default)."
                )
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}.")
        if not 1 <= num_inference_steps <= MAX_STEPS:
            raise ValueError(f"num_inference_steps={num_inference_steps}; use 1 to {MAX_STEPS} (12 is the paper's).")
        if block_size is not None and not 1 <= block_size <= 4:
            raise ValueError(f"block_size={block_size}; use 1 to 4 latent frames (4 = 16 video frames, the paper's).")
        if kv_window is not None and block_size is not None and (kv_window < 2 * block_size or kv_window % block_size):
            raise ValueError(
                f"kv_window={kv_window} must be a multiple of block_size={block_size}, at least two blocks."
            )

    # ------------------------------------------------------------------ streaming API
    @torch.no_grad()
    def start_stream(
        self,
        reference_images,
        guidance_audio: float = 2.0,
        guidance_reference: float = 2.0,
        num_inference_steps: int = 12,
        generator: torch.Generator | None = None,
        block_size: int | None = None,
        kv_window: int | None = None,
    ) -> StreamState:
        """Algorithm 2, step 1: load the references, precompute f_r = E1(I_r), z_r = E(I_r) and KV_r.

        `reference_images`: 1-3 paths / PIL images / arrays. Returns the stream's own state.
        """
        block_size = int(block_size or self.transformer.config.block_size)
        kv_window = int(kv_window or self.transformer.config.kv_window)
        self.check_inputs(guidance_audio, guidance_reference, num_inference_steps, block_size, kv_window)
        refs = load_reference_images(reference_images, self.resolution)  # (M, H, W, 3) uint8
        device, dtype = self._execution_device, self.transformer.dtype

        images = torch.from_numpy(refs).to(device=device, dtype=self.vae.dtype)
        images = images.permute(0, 3, 1, 2).unsqueeze(0) / 127.5 - 1.0  # (1, M, 3, H, W) in [-1, 1]
        f_c, z_r = self.vae.encode_reference(images)
        z_r = (z_r - self.vae.config.shift_factor) * self.vae.config.scaling_factor

        # CFG rows: [full] + [no-audio] + [no-reference]; a branch whose scale is 1 is not computed at all.
        branches = [(False, False)]  # (drop audio, drop references) per row
        if guidance_audio != 1.0:
            branches.append((True, False))
        if guidance_reference != 1.0:
            branches.append((False, True))
        rows = len(branches)
        drop_audio, drop_reference = torch.tensor(branches, device=device).T  # (rows,) each
        h = w = self.resolution // SPATIAL_COMPRESSION
        cache = self.transformer.init_kv_cache(
            rows,
            refs.shape[0],
            latent_size=(h, w),
            kv_window=kv_window,
            block_size=block_size,
            device=device,
            dtype=dtype,
        )
        self.transformer.prefill_references(
            cache,
            z_r.to(dtype).expand(rows, *z_r.shape[1:]),
            drop_reference=drop_reference,
        )
        scheduler = copy.deepcopy(self.scheduler)
        return StreamState(
            reference_frames=refs,
            ref_features=f_c,
            kv_cache=cache,
            drop_audio=drop_audio,
            guidance_audio=float(guidance_audio),
            guidance_reference=float(guidance_reference),
            num_inference_steps=int(num_inference_steps),
            block_size=block_size,
            generator=generator,
            scheduler=scheduler,
            audio_state=self.audio_encoder.init_stream_state(1),
        )

    @torch.no_grad()
    def feed(self, state: StreamState, samples: np.ndarray, sample_rate: int) -> Iterator[np.ndarray]:
        """Add an audio chunk (any size, dtype and rate) and yield the frames of every block it completes."""
        if state.finished:
            raise ValueError("This stream has been flushed; start a new one with start_stream().")
        state.audio_buffer.push(samples, sample_rate)
        yield from self._run_ready_blocks(state, final=False)

    @torch.no_grad()
    def flush(self, state: StreamState) -> Iterator[np.ndarray]:
        """End of audio: pad the last partial block with silence, generate it, trim to the audio's length."""
        if state.finished:
            return
        buf = state.audio_buffer
        buf.close()
        total_frames = -(-buf.total_samples // SAMPLES_PER_FRAME)  # the audio's length in frames (ceil)
        # Silence up to the end of the block holding the last frame: the model sees a speaker falling quiet.
        need, block = total_frames - state.frames_out, state.block_index
        pad_frames = 0
        while need > 0:
            step = state.block_video_frames(block)
            pad_frames += step
            need -= step
            block += 1
        pad = (state.frames_out + pad_frames) * SAMPLES_PER_FRAME - buf.total_samples
        buf.pad(pad)
        for frames in self._run_ready_blocks(state, final=True):
            keep = min(frames.shape[0], total_frames - (state.frames_out - frames.shape[0]))
            if keep > 0:
                yield frames[:keep]
        state.finished = True

    @torch.no_grad()
    def start_streams(self, reference_images: list, generators: list | None = None, **kwargs) -> StreamGroup:
        """Start one stream per entry of `reference_images` (same settings, same number of references) as a group
        whose blocks run batched: `feed_group` steps all streams' next blocks in one forward per denoising step.
        """
        generators = generators or [None] * len(reference_images)
        states = [self.start_stream(refs, generator=g, **kwargs) for refs, g in zip(reference_images, generators)]
        caches = [state.kv_cache for state in states]
        if len({c.num_references for c in caches}) > 1:
            raise ValueError("Streams batched in one group need the same number of reference images.")
        rows = states[0].num_branches
        group = dataclasses.replace(
            caches[0], key=torch.cat([c.key for c in caches], dim=1), value=torch.cat([c.value for c in caches], dim=1)
        )
        for i, state in enumerate(states):  # each stream keeps a view of its own rows
            rows_i = slice(i * rows, (i + 1) * rows)
            state.kv_cache = dataclasses.replace(group, key=group.key[:, rows_i], value=group.value[:, rows_i])
        return StreamGroup(states=states, kv_cache=group)

    @torch.no_grad()
    def feed_group(self, group: StreamGroup, chunks: list[tuple[np.ndarray, int] | None]) -> list[list[np.ndarray]]:
        """Add one audio chunk per stream (None: nothing new) and run every block all streams can run, batched.

        Returns the new frames per stream. End a group's streams with `flush(state)` on each.
        """
        for state, chunk in zip(group.states, chunks):
            if chunk is not None:
                state.audio_buffer.push(*chunk)
        out: list[list[np.ndarray]] = [[] for _ in group.states]
        while all(self._block_audio_ready(state, final=False) for state in group.states):
            positions = {(s.kv_cache.num_frames, s.kv_cache.stream_start) for s in group.states}
            if len(positions) > 1:
                raise ValueError("Streams of a group drifted apart (one was advanced alone); feed them separately.")
            group.kv_cache.num_frames, group.kv_cache.stream_start = positions.pop()
            for frames, state_out in zip(self._generate_blocks(group.states, group.kv_cache), out):
                state_out.append(frames)
            for state in group.states:
                state.kv_cache.num_frames = group.kv_cache.num_frames
                state.kv_cache.stream_start = group.kv_cache.stream_start
        return out

    def stream(
        self,
        reference_images,
        audio_chunks: Iterable[tuple[np.ndarray, int]],
        guidance_audio: float = 2.0,
        guidance_reference: float = 2.0,
        num_inference_steps: int = 12,
        generator: torch.Generator | None = None,
        block_size: int | None = None,
        kv_window: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Generator of uint8 frames (t, H, W, 3), one array per block, as audio chunks `(samples, rate)` arrive."""
        state = self.start_stream(
            reference_images, guidance_audio, guidance_reference, num_inference_steps, generator, block_size, kv_window
        )
        for samples, rate in audio_chunks:
            yield from self.feed(state, samples, rate)
        yield from self.flush(state)

    # ------------------------------------------------------------------ one block (Algorithm 2, steps 2-4)
    def _encode_audio(self, state: StreamState, samples: np.ndarray, final: bool = False) -> float:
        """Run the audio encoder on model-rate `samples`; queue the per-frame features; return milliseconds."""
        start = time.perf_counter()
        x = torch.from_numpy(samples).to(self._execution_device, self.audio_encoder.dtype)[None]
        feats, state.audio_state = self.audio_encoder.encode_chunk(x, state.audio_state, final=final)
        state.audio_features.extend(feats[0].unbind(0))
        state.audio_frames_in += samples.size // SAMPLES_PER_FRAME
        return (time.perf_counter() - start) * 1e3

    def _block_audio_ready(self, state: StreamState, final: bool) -> bool:
        """Encode audio until the next block's features are queued; False if its audio has not arrived yet.

        The encoder gets block-aligned pieces (a block's frames plus its look-ahead), never the microphone's own
        chunks: it then sees the same calls whatever the chunking, so stream() == __call__ bit for bit.
        """
        n = state.block_video_frames()
        if len(state.audio_features) < n:
            lookahead = int(self.audio_encoder.config.lookahead_frames)
            need = (state.frames_out + n + lookahead - state.audio_frames_in) * SAMPLES_PER_FRAME
            piece = state.audio_buffer.pop(need, partial=final)
            if piece is None:
                return False
            state.pending_audio_ms += self._encode_audio(
                state, piece, final=final and not state.audio_buffer.available
            )
        return len(state.audio_features) >= n

    def _take_block_audio(self, state: StreamState) -> torch.Tensor:
        n = state.block_video_frames()
        feats = torch.stack(state.audio_features[:n])[None]  # (1, n, D)
        del state.audio_features[:n]
        return feats

    def _run_ready_blocks(self, state: StreamState, final: bool) -> Iterator[np.ndarray]:
        while self._block_audio_ready(state, final):
            yield self._generate_blocks([state], state.kv_cache)[0]

    def _generate_blocks(self, states: list[StreamState], cache) -> list[np.ndarray]:
        """Algorithm 2 steps 2-4 for the next block of each stream, their CFG rows batched in one forward.

        `cache` holds all the streams' rows in order (a single stream's own cache, or a `StreamGroup`'s).
        """
        start = time.perf_counter()
        dit, vae, lead = self.transformer, self.vae, states[0]
        rows, device, dtype = lead.num_branches, self._execution_device, dit.dtype
        h = w = self.resolution // SPATIAL_COMPRESSION
        audio = torch.cat([self._take_block_audio(s).to(device, dtype).expand(rows, -1, -1) for s in states])
        drop_audio = torch.cat([s.drop_audio for s in states])
        timings = [BlockTiming(s.block_index, audio.shape[1], audio_ms=s.pending_audio_ms) for s in states]

        # 2. Denoising: Euler steps of the rectified-flow ODE from noise (t = 1) to data (t = 0).
        shape = (1, dit.config.in_channels, lead.block_size, h, w)
        latents = torch.cat([randn_tensor(shape, generator=s.generator, device=device, dtype=dtype) for s in states])
        lead.scheduler.set_timesteps(lead.num_inference_steps, device=device)
        for t in lead.scheduler.timesteps:
            x = latents.repeat_interleave(rows, dim=0)  # (streams * rows, C, k, h, w)
            v = dit.forward_cached(cache, x, t.expand(x.shape[0]).to(dtype), audio, drop_audio=drop_audio)
            v = torch.cat([cfg_combine(vs, lead.guidance_audio, lead.guidance_reference) for vs in v.split(rows)])
            latents = lead.scheduler.step(v, t, latents, return_dict=False)[0]
        t1 = time.perf_counter()

        # 3. The t = 0 pass on the clean block: the only pass that writes the KV cache.
        dit.update_cache(cache, latents.repeat_interleave(rows, dim=0), audio, drop_audio=drop_audio)
        t2 = time.perf_counter()

        # 4. Causal decoding with each stream's reference features, carrying its decoder caches across blocks.
        z = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        outputs = []
        for i, (state, timing) in enumerate(zip(states, timings)):
            t3 = time.perf_counter()
            video, state.decoder_cache = vae.decode_chunk(z[i : i + 1], state.ref_features, cache=state.decoder_cache)
            frames = ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (3, n, H, W)
            outputs.append(frames.permute(1, 2, 3, 0).cpu().numpy())  # (n, H, W, 3)
            timing.denoise_ms, timing.kv_ms = (t1 - start) * 1e3, (t2 - t1) * 1e3
            timing.decode_ms = (time.perf_counter() - t3) * 1e3
            timing.latency_ms = timing.audio_ms + (time.perf_counter() - start) * 1e3
            state.timings.append(timing)
            state.pending_audio_ms = 0.0
            state.block_index += 1
            state.frames_out += outputs[-1].shape[0]
        return outputs

    # ------------------------------------------------------------------ offline
    @torch.no_grad()
    def __call__(
        self,
        reference_images,
        audio,
        guidance_audio: float = 2.0,
        guidance_reference: float = 2.0,
        num_inference_steps: int = 12,
        generator: torch.Generator | None = None,
        block_size: int | None = None,
        kv_window: int | None = None,
        return_dict: bool = True,
    ) -> PortraitRTPipelineOutput | tuple:
        """Generate the whole video for `audio` (a path or `(samples, sample_rate)`); built on `stream()`.

        Returns `PortraitRTPipelineOutput(frames uint8 (T, H, W, 3) at 25 fps, audio, sample_rate, timings)` with
        T = ceil(audio length / 40 ms).
        """
        samples, rate = read_mono(audio)
        if is_silent(samples):
            raise ValueError("The audio is silent (below -60 dBFS); give speech for the portrait to say.")
        state = self.start_stream(
            reference_images, guidance_audio, guidance_reference, num_inference_steps, generator, block_size, kv_window
        )
        # The clip goes through the stream's own audio buffer, so __call__ and stream() resample identically.
        total = -(-round(samples.size * SAMPLE_RATE / rate) // SAMPLES_PER_FRAME)
        chunks: list[np.ndarray] = []
        with self.progress_bar(total=total) as bar:
            for part in itertools.chain(self.feed(state, samples, rate), self.flush(state)):
                chunks.append(part)
                bar.update(part.shape[0])
        frames = np.concatenate(chunks)
        audio = load_audio((samples, rate), SAMPLE_RATE)
        if not return_dict:
            return (frames, audio)
        return PortraitRTPipelineOutput(frames=frames, audio=audio, sample_rate=SAMPLE_RATE, timings=state.timings)
