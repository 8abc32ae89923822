"""Audio input: load any common file or array to mono float32 at the model rate, and a streaming buffer.

Every part of portrait-rt takes audio through here, so the rules live in one place:

- sources: a path (wav, flac, ogg, mp3 through libsndfile; anything else ffmpeg reads, e.g. a browser's webm/m4a)
  or a `(samples, sample_rate)` pair, samples in any of int16 / int32 / uint8 / float32 / float64, mono `(N,)` or
  multichannel `(N, C)` / `(C, N)` (the channel axis is the short one); channels are averaged after each is turned
  to the polarity of the loudest, so channels in antiphase add up instead of cancelling to silence;
- length: at most `max_seconds` (an hour by default), checked from the file's header before decoding it;
- resampling: soxr (high quality); its streaming resampler gives bit-identical output for any chunking, which is
  what makes `pipe.stream(...)` fed microphone chunks equal `pipe(...)` on the whole clip;
- bad input raises `ValueError` saying what is wrong and what to change.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import numpy as np
import soxr

from portrait_rt.constants import SAMPLE_RATE

MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 384_000
MAX_DURATION_S = 60 * 60  # one hour: longer inputs are almost certainly a mistake for a talking portrait
_ABSURD_PEAK = 64.0  # float audio this loud is integer PCM stored as float, or garbage
_UNKNOWN_LENGTH = 2**62  # libsndfile reports a length this large when the header has none (SF_COUNT_MAX)


def _check_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer, float)):
        raise ValueError(f"Sample rate must be a number of Hz, got {type(sample_rate).__name__}.")
    if not float(sample_rate).is_integer() or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(
            f"Sample rate {sample_rate} Hz is not usable; give an integer rate between {MIN_SAMPLE_RATE} and "
            f"{MAX_SAMPLE_RATE} Hz (e.g. 16000, 44100, 48000)."
        )
    return int(sample_rate)


def to_float_mono(samples: np.ndarray, allow_empty: bool = False) -> np.ndarray:
    """Samples of any integer/float dtype, mono or multichannel -> float32 mono in [-1, 1].

    Raises `ValueError` for empty (unless `allow_empty`), non-numeric, all-NaN/inf or absurdly loud input; isolated
    NaN/inf samples (a glitching microphone) are replaced by silence.
    """
    samples = np.asarray(samples)
    if samples.dtype.kind not in "uif":
        raise ValueError(f"Audio samples must be a numeric array of PCM (int16 or float), got dtype {samples.dtype}.")
    if samples.ndim not in (1, 2):
        raise ValueError(f"Audio must be 1-D (N,) or 2-D (N, C), got shape {samples.shape}.")
    if samples.size == 0:
        if allow_empty:
            return np.zeros(0, np.float32)
        raise ValueError("Audio is empty (0 samples); record or upload some speech.")

    # Integer PCM -> float in [-1, 1] first, then average the channels.
    kind, bits = samples.dtype.kind, 8 * samples.dtype.itemsize
    x = samples.astype(np.float32, copy=False)  # float32 is exact for 16-bit PCM and halves a long clip's copies
    if kind == "u":
        x = (x - 2.0 ** (bits - 1)) / 2.0 ** (bits - 1)
    elif kind == "i":
        x = x / 2.0 ** (bits - 1)
    if x.ndim == 2:
        # The channel axis is the short one: (N, C) from soundfile/Gradio, (C, N) from torch-style code.
        channel_axis = 1 if x.shape[1] <= x.shape[0] else 0
        if x.shape[channel_axis] > 32:
            raise ValueError(f"Audio of shape {x.shape} has no plausible channel axis; pass (N,) or (N, C).")
        x = mix_channels(np.moveaxis(x, channel_axis, 0))

    finite = np.isfinite(x)
    if not finite.any():
        raise ValueError("Audio contains only NaN/inf values; check the recording or the decoder.")
    if not finite.all():
        x = np.where(finite, x, 0.0)
    peak = float(np.abs(x).max())
    if peak > _ABSURD_PEAK:
        raise ValueError(
            f"Float audio peaks at {peak:.3g}, far outside [-1, 1]; if these are int16 PCM values stored as float, "
            "divide by 32768 (or pass the int16 array as is)."
        )
    return np.clip(x, -1.0, 1.0).astype(np.float32, copy=False)


def mix_channels(x: np.ndarray) -> np.ndarray:
    """Channels (C, N) -> mono (N,): their mean, each channel first turned to the polarity of the loudest one.

    Plain averaging silences a stereo file whose channels are in antiphase (one wired backwards); aligned, two
    channels never mix to less than either alone. Channels that agree (the usual case) are just averaged.
    """
    clean = np.where(np.isfinite(x), x, 0.0)
    loudest = clean[np.argmax(np.square(clean).sum(axis=1))]
    signs = np.where(clean @ loudest < 0, -1.0, 1.0).astype(x.dtype)  # (C,)
    with np.errstate(invalid="ignore"):
        return (x * signs[:, None]).mean(axis=0)


def _duration(seconds: float) -> str:
    """A length in words, rounded up to the second (so a clip over a limit never reads as the limit itself):
    45 s, 2 minutes, 2 min 1 s."""
    minutes, rest = divmod(math.ceil(seconds - 1e-9), 60)
    if minutes == 0:
        return f"{rest} s"
    whole = f"{minutes} minute" + ("s" if minutes > 1 else "")
    return whole if rest == 0 else f"{minutes} min {rest} s"


def _check_duration(seconds: float, max_seconds: float, cut: bool = False) -> None:
    """`ValueError` if `seconds` is over `max_seconds`; `cut`: only the first `seconds` were decoded (the file is
    at least that long)."""
    if seconds > max_seconds:
        length = f"over {_duration(max_seconds)}" if cut else _duration(seconds)
        raise ValueError(
            f"The audio is {length} long; the limit is {_duration(max_seconds)}. Trim it or split it into shorter "
            "clips."
        )


def _decode_with_ffmpeg(path: Path, max_seconds: float) -> tuple[np.ndarray, int]:
    """Decode anything ffmpeg reads (webm, m4a, video files...) to mono float32 at the model rate.

    Decodes at most `max_seconds` + 1 s, so a file over the limit costs no more memory than one at it.
    """
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-vn", "-ac", "1"]
    cmd += ["-t", f"{max_seconds + 1:.3f}", "-ar", str(SAMPLE_RATE), "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise ValueError(
            f"{path.name} is not an audio file this app can read (or it holds no sound); use wav, flac, ogg or mp3."
        )
    samples = np.frombuffer(proc.stdout, np.float32).copy()
    _check_duration(samples.size / SAMPLE_RATE, max_seconds, cut=True)
    return samples, SAMPLE_RATE


def read_audio_file(path: str | os.PathLike, max_seconds: float = MAX_DURATION_S) -> tuple[np.ndarray, int]:
    """Read an audio file as stored: `(samples, sample_rate)`, samples (N,) or (N, C).

    A file longer than `max_seconds` raises `ValueError` before its samples are decoded.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Audio file {path.name!r} does not exist.")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return _decode_with_ffmpeg(path, max_seconds)
    if info.frames >= _UNKNOWN_LENGTH:  # written to a pipe (`ffmpeg -f flac -`): no length in the header, no seeking
        return _decode_with_ffmpeg(path, max_seconds)
    _check_duration(info.frames / max(info.samplerate, 1), max_seconds)
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return _decode_with_ffmpeg(path, max_seconds)
    return samples, rate


def read_mono(source, max_seconds: float = MAX_DURATION_S) -> tuple[np.ndarray, int]:
    """Validated mono float32 audio at its own rate: `(samples, sample_rate)` from a path or a pair.

    Raises:
        ValueError: empty, all-NaN/inf, absurdly loud audio or audio longer than `max_seconds`, unusable sample
            rate, unreadable file.
    """
    if isinstance(source, (str, os.PathLike)):
        samples, rate = read_audio_file(source, max_seconds)
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        samples, rate = source
        # Gradio hands out (sample_rate, samples); accept either order.
        if np.ndim(samples) == 0 and np.ndim(rate) > 0:
            samples, rate = rate, samples
    else:
        raise ValueError(f"Audio must be a file path or a (samples, sample_rate) pair, got {type(source).__name__}.")
    rate = _check_rate(rate)
    x = to_float_mono(samples)
    _check_duration(x.size / rate, max_seconds)
    return x, rate


def load_audio(source, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Load `source` (a path or `(samples, sample_rate)`) as validated mono float32 at `sample_rate` (soxr HQ)."""
    x, rate = read_mono(source)
    if rate != sample_rate:
        x = soxr.resample(x, rate, sample_rate, quality="HQ").astype(np.float32)
    return x


def is_silent(samples: np.ndarray, threshold_db: float = -60.0) -> bool:
    """True if the clip's RMS level is below `threshold_db` dBFS (nothing for the mouth to follow)."""
    if samples.size == 0:
        return True
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * np.log10(max(rms, 1e-12)) < threshold_db


class AudioStreamBuffer:
    """Accepts audio chunks of any size and sample rate; hands out exact counts of model-rate samples.

    One soxr streaming resampler per input rate: its output does not depend on how the input is chunked, so any
    chunking of a clip yields bit-identical model-rate samples. A change of input rate mid-stream flushes the old
    resampler and starts a new one.

        buf = AudioStreamBuffer()
        buf.push(chunk, 48000)
        while (block := buf.pop(10240)) is not None: ...
        buf.close()            # end of audio: flush the resampler; pop(n, partial=True) returns the remainder
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        self.sample_rate = _check_rate(sample_rate)
        self._resampler: soxr.ResampleStream | None = None
        self._input_rate: int | None = None
        self._pending: list[np.ndarray] = []
        self._available = 0
        self.total_samples = 0  # model-rate samples produced so far
        self.closed = False

    @property
    def available(self) -> int:
        """Model-rate samples ready to pop."""
        return self._available

    def _append(self, x: np.ndarray) -> None:
        if x.size:
            self._pending.append(x)
            self._available += x.size
            self.total_samples += x.size

    def _flush_resampler(self) -> None:
        if self._resampler is not None:
            self._append(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            self._resampler = None

    def push(self, samples: np.ndarray, sample_rate: int) -> None:
        """Add a chunk (any dtype, mono or multichannel, any size including 0) recorded at `sample_rate`."""
        if self.closed:
            raise ValueError("This audio stream is closed; start a new stream to send more audio.")
        rate = _check_rate(sample_rate)
        x = to_float_mono(samples, allow_empty=True)
        if rate != self._input_rate:
            self._flush_resampler()
            self._input_rate = rate
        if rate == self.sample_rate:
            self._append(x)
            return
        if self._resampler is None:
            self._resampler = soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float32", quality="HQ")
        self._append(self._resampler.resample_chunk(x))

    def close(self) -> None:
        """Mark the end of the audio: flush what the resampler still holds."""
        if not self.closed:
            self._flush_resampler()
            self.closed = True

    def pad(self, num_samples: int) -> None:
        """Append `num_samples` of model-rate silence after `close()` (to complete the last block)."""
        if not self.closed:
            raise ValueError("pad() is for the end of a stream; call close() first.")
        self._append(np.zeros(max(0, num_samples), np.float32))

    def pop(self, num_samples: int, partial: bool = False) -> np.ndarray | None:
        """Exactly `num_samples` model-rate samples, or None if not yet available.

        With `partial=True` (after `close()`), returns whatever is left (possibly fewer, never None).
        """
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}.")
        if self._available < num_samples and not partial:
            return None
        data = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
        out, rest = data[:num_samples], data[num_samples:]
        self._pending = [rest] if rest.size else []
        self._available = rest.size
        return out
