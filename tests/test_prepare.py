"""`prepare`: videos written by the corpus -> clip shards; unusable videos skipped with a logged reason."""

import logging

import numpy as np
import pytest

from portrait_rt.data.prepare import prepare_folder, square_crop
from portrait_rt.data.shards import ClipStore
from portrait_rt.data.synthetic import render_clip, write_corpus
from portrait_rt.video import write_video


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    write_corpus(d, 2, resolution=96, duration=1.6)  # train_00000000.mp4, train_00000001.mp4 (+ wav, json)
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    frames = np.full((30, 96, 96, 3), 128, np.uint8)
    write_video(d / "silent.mp4", frames, np.zeros(30 * 640, np.float32))
    write_video(d / "no_audio.mp4", frames)
    return d


def test_prepare_corpus_videos(video_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        store = prepare_folder(video_dir, tmp_path / "shards", resolution=64, crop="centre")
    assert sorted(store.names) == ["train_00000000", "train_00000001"]
    reasons = {s["source"]: s["reason"] for s in ClipStore(tmp_path / "shards").index["skipped"]}
    assert set(reasons) == {"corrupt.mp4", "silent.mp4", "no_audio.mp4"}
    assert "silent" in reasons["silent.mp4"] and "no audio" in reasons["no_audio.mp4"]
    assert "corrupt.mp4" in caplog.text  # logged, not only recorded

    frames, audio = store.load(store.names.index("train_00000000"))
    assert frames.shape == (40, 64, 64, 3) and audio.shape == (40 * 640,)  # 1.6 s at 25 fps, 16 kHz
    # Same picture as the renderer's (h.264 + resize losses only) and the speech survives AAC.
    clip = render_clip(0, resolution=64, duration=1.6)
    mse = np.mean((frames.astype(np.float32) - clip.frames.astype(np.float32)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 22
    assert np.corrcoef(np.abs(audio[:20000]), np.abs(clip.audio[:20000]))[0, 1] > 0.5


def test_square_crop():
    assert square_crop((1280, 720)) == (280, 0, 720, 720)
    assert square_crop((640, 480), (10, 20, 300, 300)) == (10, 20, 300, 300)
    with pytest.raises(ValueError, match="square"):
        square_crop((640, 480), (0, 0, 300, 200))
    with pytest.raises(ValueError, match="outside"):
        square_crop((640, 480), (500, 0, 300, 300))


def test_prepare_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        prepare_folder(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No videos"):
        prepare_folder(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="multiple of 64"):
        prepare_folder(tmp_path / "empty", tmp_path / "out", resolution=100)
