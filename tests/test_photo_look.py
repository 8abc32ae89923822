"""The corpus's photographic look: texture, no reserved mouth colour, the mouth truth, determinism, held-out splits."""

import json

import numpy as np
import pytest
from scipy.ndimage import laplace

from portrait_rt.data import speech
from portrait_rt.data.photo_look import (
    EVAL_IMAGES,
    KEY_MARGIN,
    NATURAL_IMAGES,
    PhotoStyle,
    away_from_key,
    look_for,
    natural_images,
)
from portrait_rt.data.synthetic import EVAL_IDENTITY_OFFSET, render_clip
from portrait_rt.eval.metrics import mouth_opening, pearson
from portrait_rt.mouth import KEY_OUTER, MOUTH_INTERIOR_RGB, key_distance


@pytest.fixture(scope="module")
def photo():
    return render_clip(3, 128, duration=1.6, look="photo")


@pytest.fixture(scope="module")
def cartoon():
    return render_clip(3, 128, duration=1.6)


def _box(b):
    x0, y0, x1, y1 = np.round(b).astype(int)
    return slice(y0, y1), slice(x0, x1)


def test_same_clip_truth_in_both_looks(photo, cartoon):
    """The photo look draws the cartoon's identity, speech and motion: the same audio, mouth and pose truth, boxes
    that agree within a couple of pixels, and the open mouth's drawn area as extra truth."""
    assert photo.frames.shape == cartoon.frames.shape and photo.frames.dtype == np.uint8
    assert np.array_equal(photo.audio, cartoon.audio)
    for k in ("mouth_open", "mouth_spread", "head_pose", "head_translation", "blink"):
        assert np.array_equal(photo.meta[k], cartoon.meta[k]), k
    for k in ("face_box", "mouth_box", "head_box", "torso_box", "body_box"):
        assert photo.meta[k].shape == (photo.num_frames, 4)
    assert np.abs(photo.meta["face_box"] - cartoon.meta["face_box"]).max() < 1.0  # the same outline, one pixel grid
    assert np.abs(photo.meta["mouth_box"] - cartoon.meta["mouth_box"]).max() < 1.0
    assert photo.meta["look"] == "photo" and cartoon.meta["look"] == "cartoon"
    area = photo.meta["mouth_interior_area"]
    assert area.shape == (photo.num_frames,) and (area[photo.meta["mouth_open"] == 0] == 0).all()


def test_photo_frames_carry_texture(photo, cartoon):
    """Inside the face box (edges left out by taking the median), a cartoon's Laplacian is 0 (flat fills); skin,
    shading, noise and JPEG give the photo look a median |Laplacian| of several grey levels (7-14 measured)."""

    def median_hf(clip):
        out = []
        for f, b in zip(clip.frames, clip.meta["face_box"]):
            ys, xs = _box(b)
            lap = np.abs(laplace(f.astype(np.float32).mean(-1)))[ys, xs]
            out.append(np.median(lap[3:-3, 3:-3]))
        return float(np.mean(out))

    assert median_hf(cartoon) < 0.5
    assert median_hf(photo) > 3.0


def test_no_reserved_colour_anywhere():
    """No photo-look pixel comes within KEY_MARGIN of the reserved mouth colour (so the colour key, and the keyed
    training losses, read 0), over identities of every skin tone, mouths wide open included."""
    for seed in range(6):
        clip = render_clip(seed, 64, duration=0.8, look="photo")
        assert key_distance(clip.frames).min() >= KEY_MARGIN - 1
        assert mouth_opening(clip.frames).max() == 0
        for f, b in zip(clip.frames, clip.meta["mouth_box"]):
            ys, xs = _box(b)
            assert (key_distance(f[ys, xs]) < KEY_OUTER).mean() < 0.02


def test_away_from_key_moves_only_the_near_colours():
    rng = np.random.default_rng(0)
    near = np.clip(np.asarray(MOUTH_INTERIOR_RGB) + rng.normal(0, 25, (500, 3)), 0, 255).astype(np.uint8)
    far = rng.integers(0, 256, (500, 3)).astype(np.uint8)
    far = far[key_distance(far) >= KEY_MARGIN]
    moved = away_from_key(np.concatenate([near, far]))
    assert key_distance(moved).min() >= KEY_MARGIN
    assert np.array_equal(moved[len(near) :], far)
    assert np.array_equal(moved[: len(near)][:, [0, 2]], near[:, [0, 2]])  # only green rises: same red and blue


def test_drawn_mouth_follows_the_opening_truth(photo):
    """From pixels alone: the mouth box's dark pixels (under 45% of the face's median brightness: the cavity, and
    the seam of a closed mouth) grow with the opening truth (r 0.95-0.98 measured on 4 identities); the area the
    renderer reports follows it too (r > 0.99)."""
    dark = []
    for f, b, fb in zip(photo.frames, photo.meta["mouth_box"], photo.meta["face_box"]):
        lum = f.astype(np.float32).mean(-1)
        ref = np.median(lum[_box(fb)])
        dark.append(float((lum[_box(b)] < 0.45 * ref).sum()))
    opening = photo.meta["mouth_open"]
    assert opening.max() > 0.5 and opening.min() < 0.05
    assert pearson(np.asarray(dark), opening) > 0.9
    assert pearson(photo.meta["mouth_interior_area"], opening) > 0.98


def test_deterministic_per_seed(photo):
    again = render_clip(3, 128, duration=1.6, look="photo")
    assert np.array_equal(again.frames, photo.frames)
    other = render_clip(4, 128, duration=1.6, look="photo")
    assert not np.array_equal(other.frames, photo.frames)
    with pytest.raises(ValueError, match="look"):
        render_clip(3, 64, duration=0.4, look="painting")


def test_held_out_identities_voices_and_images():
    """The photo look keeps the corpus's split rules (eval identity seeds, eval voices) and adds one: the sample
    photographs in EVAL_IMAGES appear in eval backgrounds only, the others in train backgrounds only."""
    clip = render_clip(3, 64, duration=0.4, split="eval", look="photo")
    assert clip.meta["identity"]["seed"] == EVAL_IDENTITY_OFFSET + 3
    assert clip.meta["speech"]["language"] in speech.EVAL_LANGUAGES
    assert not set(natural_images("train")) & set(EVAL_IMAGES)
    assert set(natural_images("eval")) <= set(EVAL_IMAGES) and "grace_hopper" not in NATURAL_IMAGES
    for seed in range(200):
        train = PhotoStyle.sample(seed, "train")
        held = PhotoStyle.sample(EVAL_IDENTITY_OFFSET + seed, "eval")
        assert train.image is None or train.image not in EVAL_IMAGES
        assert held.image is None or held.image in EVAL_IMAGES


def test_look_for_mix():
    """`look_for` gives about the asked share of photo clips, per seed, and raising the share only adds photos."""
    seeds = range(2000)
    half = np.array([look_for(s, "train", 0.5) == "photo" for s in seeds])
    more = np.array([look_for(s, "train", 0.8) == "photo" for s in seeds])
    assert 0.46 < half.mean() < 0.54 and 0.76 < more.mean() < 0.84 and (more >= half).all()
    assert all(look_for(s, "train", 0.0) == "cartoon" and look_for(s, "eval", 1.0) == "photo" for s in range(50))
    with pytest.raises(ValueError, match="photo_fraction"):
        look_for(0, "train", 1.5)


def test_synth_and_prepare_cli_mix(tmp_path):
    from portrait_rt.cli import main
    from portrait_rt.data.shards import ClipStore

    out = tmp_path / "mp4"
    args = ["synth", "--out", str(out), "--num-clips", "3", "--resolution", "64", "--duration", "0.4"]
    assert main(args + ["--photo-fraction", "1"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert [c["look"] for c in index["clips"]] == ["photo"] * 3
    assert json.loads((out / "train_00000000.json").read_text())["look"] == "photo"
    shards = tmp_path / "shards"
    args = ["prepare", "synthetic", str(shards), "--num-clips", "4", "--resolution", "64", "--duration", "0.4"]
    assert main(args + ["--photo-fraction", "0.5"]) == 0
    store = ClipStore(shards)
    looks = [c["look"] for c in store.index["clips"]]
    assert looks == [look_for(s, "train", 0.5) for s in range(4)]
    # the renderer's truth travels with the frames
    k = looks.index("photo")
    clip = render_clip(k, 64, duration=0.4, look="photo")
    assert np.array_equal(store.truth(k, "mouth_box"), clip.meta["mouth_box"])
    assert np.array_equal(store.truth(k, "mouth_interior_area"), clip.meta["mouth_interior_area"])
    assert store.truth(k, "head_pose").shape == (store.num_frames(k), 3)
    with pytest.raises(KeyError, match="mouth_interior_area"):
        store.truth(looks.index("cartoon"), "mouth_interior_area")
    # two worker processes write the same shards
    args[2] = str(tmp_path / "shards2")
    assert main(args + ["--photo-fraction", "0.5", "--workers", "2"]) == 0
    store2 = ClipStore(tmp_path / "shards2")
    assert store2.names == store.names
    for i in range(len(store)):
        assert np.array_equal(store2.load(i)[0], store.load(i)[0])
        assert np.array_equal(store2.truth(i, "mouth_open"), store.truth(i, "mouth_open"))
