"""Video output and input: frames (uint8 T,H,W,3 at 25 fps) + audio -> browser-playable mp4 / streaming segments.

Encoding is h.264 (yuv420p, `+faststart`) with AAC audio, through the ffmpeg binary that imageio-ffmpeg ships (or
`$PORTRAIT_RT_FFMPEG`). Frames go in over a pipe and audio through a temporary wav, so nothing is re-encoded twice.

`write_video` writes frames it is given whole (a live segment, a short clip); `VideoWriter` takes them block by block
as a pipeline makes them, so a clip of any length is written in constant memory.

Why not diffusers' `encode_video` (PyAV): it serves a one-off export of `pipe(...)`'s output (a test does that), but
not these writers: it needs the whole audio at the end and writes no `+faststart` (a browser must fetch the whole
mp4 before playing), no MPEG-TS segments with continuous timestamps for the live stream, no CRF / zero-latency /
keyframe settings, neither trims nor pads the audio to the video, prints a progress bar per file, and reads a uint8
numpy video whose values are all 0 or 1 as floats in [0, 1]; and PyAV is not otherwise a dependency of the library.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from portrait_rt.constants import FPS, SAMPLE_RATE


def ffmpeg_exe() -> str:
    """The ffmpeg binary: `$PORTRAIT_RT_FFMPEG`, else imageio-ffmpeg's bundled one, else `ffmpeg` on PATH."""
    if os.environ.get("PORTRAIT_RT_FFMPEG"):
        return os.environ["PORTRAIT_RT_FFMPEG"]
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return "ffmpeg"


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"Frames must be a non-empty uint8 array (T, H, W, 3), got shape {frames.shape}.")
    if frames.dtype != np.uint8:
        raise ValueError(f"Frames must be uint8 (0-255), got {frames.dtype}; convert with frames.astype(np.uint8).")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"h.264 (yuv420p) needs even frame sizes, got {frames.shape[2]}x{frames.shape[1]}.")
    return np.ascontiguousarray(frames)


def _video_input_args(width: int, height: int, fps: int) -> list[str]:
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0"]


def _h264_args(crf: int) -> list[str]:
    return ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-crf", str(crf), "-pix_fmt", "yuv420p"]


AAC_ARGS = ["-c:a", "aac", "-b:a", "128k", "-ar", "44100", "-ac", "1"]


def _run_ffmpeg(cmd: list[str], stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-800:]}")
    return proc.stdout


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    fps: int = FPS,
    container: str | None = None,
    crf: int = 20,
    start_time: float = 0.0,
) -> Path:
    """Write frames (uint8 T,H,W,3) and optional mono float audio as h.264 + AAC.

    `container` is taken from the suffix (`.mp4`, `.ts`) unless given. `start_time` offsets the timestamps, which
    keeps consecutive `.ts` segments of a live stream continuous. Audio is trimmed or padded to the video's length.
    The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    import soundfile as sf

    frames = _check_frames(frames)
    path = Path(path)
    container = container or {".ts": "mpegts", ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}.get(path.suffix, "mp4")
    t, h, w, _ = frames.shape
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-y", *_video_input_args(w, h, fps)]
    with tempfile.TemporaryDirectory() as tmp:
        if audio is not None:
            audio = np.asarray(audio, np.float32).reshape(-1)
            n = round(t / fps * sample_rate)
            audio = np.pad(audio[:n], (0, max(0, n - audio.size)))
            wav = Path(tmp) / "audio.wav"
            sf.write(wav, audio, sample_rate, subtype="FLOAT")
            cmd += ["-i", str(wav), *AAC_ARGS]
        cmd += [*_h264_args(crf), "-g", str(fps), "-shortest" if audio is not None else "-an"]
        if start_time:
            cmd += ["-output_ts_offset", f"{start_time:.6f}"]
        if container == "mp4":
            cmd += ["-movflags", "+faststart"]
        tmp_out = path.with_name(f".{path.name}.partial")
        cmd += ["-f", container, str(tmp_out)]
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            _run_ffmpeg(cmd, frames.tobytes())
            os.replace(tmp_out, path)
        finally:
            tmp_out.unlink(missing_ok=True)
    return path


class VideoWriter:
    """Frames and audio block by block -> one h.264 + AAC mp4, in memory that does not grow with the clip.

        with VideoWriter("out.mp4") as writer:
            for record in pipe.generate_blocks(...):
                writer.write(record.frames, record.audio)
        writer.path   # the finished file (written under a temporary name, renamed when complete)

    Frames stream into ffmpeg's encoder as they come; the audio goes to a wav beside it; `close()` muxes the two (the
    video is copied, not encoded again), the audio trimmed or padded to the video's length. Leaving the `with`
    block on an exception stops the encoder and leaves no file behind.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, fps: int = FPS, crf: int = 20) -> None:
        self.path, self.sample_rate, self.fps, self.crf = Path(path), sample_rate, fps, crf
        self.frames_written = 0
        self.audio_written = 0  # samples
        self._tmp = tempfile.TemporaryDirectory(prefix="portrait-rt-writer-")
        self._video = Path(self._tmp.name) / "video.mp4"
        self._log = open(Path(self._tmp.name) / "ffmpeg.log", "wb")  # a file, not a pipe: it can never fill up
        self._encoder: subprocess.Popen | None = None
        self._size: tuple[int, int] | None = None
        self._wav = None

    def write(self, frames: np.ndarray, audio: np.ndarray | None = None) -> None:
        """Append uint8 frames (t, H, W, 3) and, optionally, the mono float audio that goes with them."""
        import soundfile as sf

        frames = _check_frames(frames)
        t, h, w, _ = frames.shape
        if self._encoder is None:
            self._size = (h, w)
            cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-y", *_video_input_args(w, h, self.fps)]
            cmd += [*_h264_args(self.crf), "-g", str(self.fps), "-an", "-f", "mp4", str(self._video)]
            self._encoder = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self._log, stderr=self._log)
        elif (h, w) != self._size:
            raise ValueError(f"Frames changed size from {self._size} to {(h, w)} within one video.")
        try:
            self._encoder.stdin.write(frames.tobytes())
        except BrokenPipeError:
            raise RuntimeError(f"ffmpeg stopped: {self._log_tail()}") from None
        self.frames_written += t
        if audio is not None:
            if self._wav is None:
                self._wav = sf.SoundFile(
                    Path(self._tmp.name) / "audio.wav", "w", self.sample_rate, 1, subtype="FLOAT", format="WAV"
                )
            audio = np.asarray(audio, np.float32).reshape(-1)
            self._wav.write(audio)
            self.audio_written += audio.size

    def close(self) -> Path:
        """Finish the file: end the encoder, mux the audio in, rename into place. Returns `path`."""
        try:
            if self._encoder is None:
                raise ValueError("No frames were written; a video needs at least one frame.")
            self._encoder.stdin.close()
            if self._encoder.wait() != 0:
                raise RuntimeError(f"ffmpeg failed: {self._log_tail()}")
            cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-y", "-i", str(self._video)]
            if self._wav is not None:
                n = round(self.frames_written / self.fps * self.sample_rate)  # the video's length in samples
                self._wav.write(np.zeros(max(0, n - self.audio_written), np.float32))
                self._wav.close()
                cmd += ["-i", self._wav.name, "-map", "0:v", "-map", "1:a", *AAC_ARGS, "-shortest"]
            tmp_out = self.path.with_name(f".{self.path.name}.partial")
            cmd += ["-c:v", "copy", "-movflags", "+faststart", "-f", "mp4", str(tmp_out)]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                _run_ffmpeg(cmd)
                os.replace(tmp_out, self.path)
            finally:
                tmp_out.unlink(missing_ok=True)
            return self.path
        finally:
            self._cleanup()

    def _log_tail(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_bytes().decode(errors="replace")[-800:]

    def _cleanup(self) -> None:
        if self._encoder is not None and self._encoder.poll() is None:
            self._encoder.kill()
            self._encoder.wait()
        if self._wav is not None and not self._wav.closed:
            self._wav.close()
        self._log.close()
        self._tmp.cleanup()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._cleanup()


def probe(path: str | os.PathLike) -> dict:
    """Container facts from ffmpeg: duration, fps, frame size, audio rate; for tests and data preparation."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    reader.close()
    return meta


def read_video(
    path: str | os.PathLike, fps: int | None = None, sample_rate: int = SAMPLE_RATE, size: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Read `(frames uint8 (T,H,W,3), mono float32 audio, sample_rate)` from a video file.

    `fps` resamples the video in time (e.g. 25 for training data), `size` scales to `size`x`size` (no crop; use
    `portrait_rt.data.prepare` for cropping). A file without audio gives an empty audio array.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Video file {str(path)!r} does not exist.")
    vf = [f"fps={fps}"] if fps else []
    if size:
        vf.append(f"scale={size}:{size}:flags=area")
    meta = probe(path)
    w, h = (size, size) if size else meta["size"]
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path)]
    cmd += ["-vf", ",".join(vf)] if vf else ["-fps_mode", "passthrough"]  # (MPEG-TS would otherwise dup frames)
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = _run_ffmpeg(cmd)
    frames = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3).copy()
    if meta.get("audio_codec") is None:
        return frames, np.zeros(0, np.float32), sample_rate
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-vn", "-ac", "1", "-ar", str(sample_rate)]
    audio = np.frombuffer(_run_ffmpeg(cmd + ["-f", "f32le", "-"]), np.float32).copy()
    return frames, audio, sample_rate


def write_metadata(path: str | os.PathLike, meta: dict) -> None:
    """Small JSON sidecar (numpy arrays become lists)."""

    def default(o):
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    Path(path).write_text(json.dumps(meta, default=default, indent=1))
