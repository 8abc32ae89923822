import numpy as np
import pytest

from portrait_rt.constants import FPS, SAMPLE_RATE
from portrait_rt.video import probe, read_video, write_video


def _clip(t=37, size=64):
    rng = np.random.default_rng(0)
    frames = np.zeros((t, size, size, 3), np.uint8)
    for i in range(t):  # a moving bright square: temporal content the codec must keep
        frames[i, 8:24, (i * 2) % (size - 16) : (i * 2) % (size - 16) + 16] = 230
    frames += rng.integers(0, 20, frames.shape, dtype=np.uint8)
    audio = (0.3 * np.sin(np.arange(t * SAMPLE_RATE // FPS) / SAMPLE_RATE * 2 * np.pi * 300)).astype(np.float32)
    return frames, audio


def test_mp4_round_trip(tmp_path):
    frames, audio = _clip()
    path = write_video(tmp_path / "out.mp4", frames, audio)
    meta = probe(path)
    assert meta["codec"] == "h264" and meta["audio_codec"] == "aac" and meta["fps"] == FPS
    back, audio_back, sr = read_video(path)
    assert back.shape == frames.shape and sr == SAMPLE_RATE
    assert abs(audio_back.size - audio.size) <= SAMPLE_RATE // FPS  # within one frame
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 8  # h.264 at crf 20 keeps the content
    assert np.corrcoef(audio_back[:1000], audio[:1000])[0, 1] > 0.9
    assert not list(tmp_path.glob(".*partial"))


def test_ts_segment_and_silent_video(tmp_path):
    frames, audio = _clip(16)
    seg = write_video(tmp_path / "seg.ts", frames, audio, start_time=0.64)
    assert probe(seg)["codec"] == "h264"
    assert read_video(seg)[0].shape[0] == 16  # no duplicated frames from MPEG-TS timestamps
    back, audio_back, _ = read_video(write_video(tmp_path / "mute.mp4", frames))
    assert back.shape[0] == 16 and audio_back.size == 0


def test_read_resample_fps_and_size(tmp_path):
    frames, audio = _clip(50)
    path = write_video(tmp_path / "x.mp4", frames, audio, fps=50)
    back, _, _ = read_video(path, fps=25, size=32)
    assert back.shape == (25, 32, 32, 3)


@pytest.mark.parametrize(
    "frames,match",
    [
        (np.zeros((0, 8, 8, 3), np.uint8), "non-empty"),
        (np.zeros((2, 8, 8, 3)), "uint8"),
        (np.zeros((2, 9, 8, 3), np.uint8), "even"),
    ],
)
def test_bad_frames(tmp_path, frames, match):
    with pytest.raises(ValueError, match=match):
        write_video(tmp_path / "bad.mp4", frames)
    assert not (tmp_path / "bad.mp4").exists()
