"""Synthetic corpus: determinism, alignment, held-out splits, the audio->mouth mapping (portrait_rt.mouth), writing."""

import json

import numpy as np
import pytest

from portrait_rt.constants import SAMPLES_PER_FRAME
from portrait_rt.data import speech
from portrait_rt.data.synthetic import (
    EVAL_IDENTITY_OFFSET,
    Identity,
    clip_speech_spec,
    identity_seed_for,
    render_clip,
    write_clip,
)
from portrait_rt.mouth import MOUTH_INTERIOR_RGB, audio_mouth_features, audio_to_mouth_opening, key_distance


@pytest.fixture(scope="module")
def clip():
    return render_clip(3, 64, duration=1.2)


def test_render_shapes_alignment_and_ground_truth(clip):
    t = clip.num_frames
    assert t == 30 and clip.frames.shape == (30, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert (
        clip.audio.dtype == np.float32 and clip.audio.shape == (t * SAMPLES_PER_FRAME,) and clip.sample_rate == 16000
    )
    m = clip.meta
    assert m["head_pose"].shape == (t, 3) and m["blink"].shape == (t,) and m["mouth_open"].shape == (t,)
    for k in ("face_box", "head_box", "torso_box", "body_box", "mouth_box"):
        assert m[k].shape == (t, 4) and (m[k][:, 2] > m[k][:, 0]).all() and (m[k][:, 3] > m[k][:, 1]).all()
    assert np.allclose(m["mouth_open"], audio_to_mouth_opening(clip.audio))  # the documented mapping drives it
    assert m["speech"]["language"] in speech.TRAIN_LANGUAGES


def test_deterministic_per_seed(clip):
    again = render_clip(3, 64, duration=1.2)
    assert np.array_equal(again.frames, clip.frames) and np.array_equal(again.audio, clip.audio)
    other = render_clip(4, 64, duration=1.2)
    assert not np.array_equal(other.frames, clip.frames)
    held_out = render_clip(3, 64, duration=1.2, split="eval")
    assert held_out.meta["identity"]["seed"] == EVAL_IDENTITY_OFFSET + 3
    assert not np.array_equal(held_out.frames, clip.frames)


def test_motion_not_determined_by_audio_but_mouth_is(clip):
    silent = render_clip(3, 64, audio=np.zeros_like(clip.audio))
    assert np.allclose(silent.meta["head_pose"], clip.meta["head_pose"])
    assert np.array_equal(silent.meta["blink"], clip.meta["blink"])
    assert silent.meta["mouth_open"].max() == 0 and clip.meta["mouth_open"].max() > 0.3
    # the open mouth shows the reserved interior colour; a silent one never does
    assert (key_distance(clip.frames) < 30).any() and not (key_distance(silent.frames) < 30).any()


def test_other_motion_keeps_the_first_frame_and_the_mouth(clip):
    """`motion_seed`: what a perfect generator could output from the first frame and the speech (the report's sharp
    ceiling): same frame 0 and mouth, another head motion afterwards."""
    other = render_clip(3, 64, duration=1.2, motion_seed=1)
    assert np.array_equal(other.frames[0], clip.frames[0])
    assert np.array_equal(other.meta["mouth_open"], clip.meta["mouth_open"])
    moved = np.abs(other.meta["head_pose"] - clip.meta["head_pose"]).max(axis=1)
    assert moved[0] == 0 and moved[-1] > 0.5  # degrees
    assert not np.array_equal(other.frames[-1], clip.frames[-1])
    assert np.array_equal(render_clip(3, 64, duration=1.2, motion_seed=1).frames, other.frames)


def test_any_resolution_and_bad_input():
    big = render_clip(5, 256, duration=0.2)
    assert big.frames.shape == (5, 256, 256, 3)
    for kwargs in ({"resolution": 63}, {"resolution": 1024}, {"split": "test"}, {"duration": -1.0}):
        with pytest.raises(ValueError):
            render_clip(0, **{"resolution": 64, "duration": 0.4, **kwargs})


def test_held_out_voices_and_identities_never_in_train():
    for seed in range(400):
        spec = clip_speech_spec(seed, "train")
        assert spec.language not in speech.EVAL_LANGUAGES and spec.variant not in speech.EVAL_VARIANTS
        assert identity_seed_for(seed, "train") < EVAL_IDENTITY_OFFSET
        eval_spec = clip_speech_spec(seed, "eval")
        assert eval_spec.language in speech.EVAL_LANGUAGES and eval_spec.variant in speech.EVAL_VARIANTS
        assert identity_seed_for(seed, "eval") >= EVAL_IDENTITY_OFFSET
    assert not set(speech.TRAIN_LANGUAGES) & set(speech.EVAL_LANGUAGES)
    assert not set(speech.TRAIN_VARIANTS) & set(speech.EVAL_VARIANTS)
    with pytest.raises(ValueError):
        identity_seed_for(EVAL_IDENTITY_OFFSET, "train")


def test_palette_keeps_away_from_mouth_colour():
    for seed in range(100):
        ident = Identity.sample(seed)
        colors = [ident.skin, ident.hair, ident.shirt, ident.trim, *ident.bg_colors]
        assert key_distance(np.array(colors)).min() >= 100
    assert key_distance(MOUTH_INTERIOR_RGB) == 0


def test_audio_to_mouth_mapping():
    sr, n = 16000, 40 * SAMPLES_PER_FRAME
    t = np.arange(n) / sr
    assert audio_to_mouth_opening(np.zeros(n, np.float32)).max() == 0  # closed in silence
    vowel = 0.3 * np.sin(2 * np.pi * 220 * t) * ((t >= 0.4) & (t < 0.8))  # frames 10..19
    opening = audio_to_mouth_opening(vowel.astype(np.float32))
    assert opening.shape == (40,)
    assert opening[11:19].min() > 0.6 and opening[:8].max() == 0 and opening[22:].max() == 0
    # frication (high-band noise) opens the mouth less than a vowel of the same loudness, and spreads it wider
    rng = np.random.default_rng(0)
    noise = np.diff(rng.standard_normal(n + 1)) * ((t >= 0.4) & (t < 0.8))
    noise *= np.sqrt((vowel**2).sum() / (noise**2).sum())
    f_open, f_spread = audio_mouth_features(noise.astype(np.float32))
    v_open, v_spread = audio_mouth_features(vowel.astype(np.float32))
    assert f_open[12:18].mean() < 0.7 * v_open[12:18].mean() and f_spread[14] > v_spread[14]
    # other sample rates are resampled to 16 kHz first: same number of frames
    assert audio_to_mouth_opening(np.zeros(n * 3, np.float32), 48000).shape == (40,)


def test_two_second_clip_renders_and_writes(tmp_path):
    from portrait_rt.video import read_video

    clip = render_clip(7, 128, duration=2.0)
    paths = write_clip(clip, tmp_path, "clip")
    frames, audio, sr = read_video(paths["mp4"])
    assert frames.shape == (50, 128, 128, 3) and sr == 16000 and abs(audio.size - 32000) < 2000
    assert np.abs(frames.astype(int) - clip.frames).mean() < 6  # h.264 round trip
    meta = json.loads(paths["json"].read_text())
    assert len(meta["mouth_open"]) == 50 and len(meta["face_box"]) == 50
    assert paths["wav"].stat().st_size > 60000


def test_synth_cli(tmp_path):
    from portrait_rt.cli import main

    assert main(["synth", "--out", str(tmp_path), "--num-clips", "2", "--resolution", "64", "--duration", "0.5"]) == 0
    index = json.loads((tmp_path / "index.json").read_text())
    assert [c["seed"] for c in index["clips"]] == [0, 1]
    assert all((tmp_path / c["mp4"]).is_file() for c in index["clips"])
