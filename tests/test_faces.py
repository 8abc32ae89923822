"""A visitor's photograph as uploaded: the face found and cropped to the training framing, the result pasted back.

Real pictures from wheels we already depend on: matplotlib's `grace_hopper.jpg` (a head-and-shoulders portrait,
512 x 600), gradio's `groot.jpeg` (a film still: a face at the top edge of a wide frame) and `tower.jpg` (a photo
without a face); and a landscape drawn here.
"""

import warnings
from pathlib import Path

import gradio
import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from portrait_rt.eval.framing import measure_training_framing
from portrait_rt.faces import (
    MAX_PHOTO_SIDE,
    TRAINING_FRAMING,
    FaceAlignment,
    NoFaceFoundError,
    NoFaceFoundWarning,
    PasteBack,
    align_face,
    align_references,
    detect_face,
)

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
PHOTO_MOUTH = (265, 281)  # the centre of her mouth, read off the picture (x, y)
PHOTO_EYES = ((213, 190), (308, 190))
STILL = Path(gradio.__file__).parent / "media_assets" / "images" / "groot.jpeg"  # 910 x 512
NO_FACE = Path(gradio.__file__).parent / "media_assets" / "images" / "tower.jpg"  # the Eiffel tower, 377 x 600
RES = 128


def landscape(width: int = 480, height: int = 320) -> np.ndarray:
    """Sky, sun, two ranges of hills and a lake: shapes and gradients, no face."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([120 + 80 * yy / height, 170 + 50 * yy / height, 235 - 20 * yy / height], -1)
    img[(xx - 0.75 * width) ** 2 + (yy - 0.25 * height) ** 2 < (0.07 * height) ** 2] = (250, 230, 150)
    far = 0.55 * height + 0.08 * height * np.sin(xx / width * 7)
    near = 0.7 * height + 0.06 * height * np.sin(xx / width * 13 + 1)
    img[yy > far] = (90, 120, 100)
    img[yy > near] = (60, 110, 50)
    img[yy > 0.88 * height] = (70, 110, 160)
    return img.astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _inside(point, box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def test_the_face_of_a_real_photo_is_found_and_its_mouth_lands_in_the_training_mouth_box():
    a = align_face(PHOTO, RES)
    assert a.framing == "face" and a.photo.shape == (600, 512, 3)
    cx, cy, size = a.face
    assert abs(cx - 266) < 15 and abs(cy - 216) < 15 and 200 < size < 250  # the cascade's box on her face
    assert _inside(PHOTO_MOUTH, a.to_photo(TRAINING_FRAMING.mouth_box))
    face_box = a.to_photo(TRAINING_FRAMING.face_box)
    assert all(_inside(eye, face_box) for eye in PHOTO_EYES) and _inside(PHOTO_MOUTH, face_box)
    assert a.crop.shape == (RES, RES, 3)


def test_a_face_at_the_edge_of_a_wide_film_still_is_aligned_with_the_edge_repeated():
    a = align_face(STILL, RES)
    x0, y0, side = a.box
    assert a.framing == "face" and y0 < 0  # the square reaches above the picture
    assert a.photo.shape == (512, 910, 3) and a.crop.shape == (RES, RES, 3)
    top = round(-y0 / side * RES)  # the rows above the picture repeat its first row
    assert np.abs(np.diff(a.crop[: top - 1].astype(int), axis=0)).max() <= 2


@pytest.mark.parametrize("source", ["landscape", "tower"])
def test_a_picture_without_a_face_says_so_and_falls_back_to_the_centre_crop(source):
    image = landscape() if source == "landscape" else NO_FACE
    with pytest.warns(NoFaceFoundWarning, match="Reference 1: no face found.*centre"):
        (a,) = align_references([image], RES)
    assert a.framing == "centre" and not a.face_found and not a.in_training_framing
    h, w = a.photo.shape[:2]
    side = min(h, w)
    assert a.box == ((w - side) // 2, (h - side) // 2, side)
    with pytest.raises(NoFaceFoundError, match="no face found"):
        align_face(image, RES, require_face=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert align_face(image, RES, align=False).framing == "centre"  # alignment off: no search, no message


def test_three_crops_of_one_photo_align_to_nearly_the_same_square():
    photo = Image.open(PHOTO).convert("RGB")
    crops = [photo, photo.crop((0, 60, 512, 600)), photo.crop((40, 0, 480, 520))]
    offsets = [(0, 0), (0, 60), (40, 0)]
    aligned = align_references(crops, RES)
    assert all(a.face_found for a in aligned)
    boxes = np.array([(a.box[0] + ox, a.box[1] + oy, a.box[2]) for a, (ox, oy) in zip(aligned, offsets)], float)
    spread = np.ptp(boxes, axis=0) / boxes[0, 2]  # the same square of the original photo: within 3% for its place
    assert spread[:2].max() < 0.03 and spread[2] < 0.06  # and 6% for its size (the cascade's own jitter)
    # the crops themselves: within a pixel or two of each other (PSNR 16-22 dB on this sharp photo), while centre
    # crops of the same three pictures are far apart (about 10 dB)
    centred = align_references(crops, RES, align=False)
    for a, c in zip(aligned[1:], centred[1:]):
        assert _psnr(a.crop, aligned[0].crop) > max(15.0, _psnr(c.crop, centred[0].crop) + 5)


def test_a_square_at_the_model_size_is_taken_as_framed_and_alignments_pass_through():
    square = np.asarray(Image.open(PHOTO).convert("RGB").resize((RES, RES)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = align_face(square, RES)
    assert a.framing == "as_is" and a.in_training_framing and np.array_equal(a.crop, square)
    b = align_face(PHOTO, RES)
    assert align_references([b], RES)[0] is b


def test_a_large_photo_is_capped_with_even_sides():
    big = Image.open(PHOTO).convert("RGB").resize((1707, 2001))
    a = align_face(big, RES)
    assert a.framing == "face" and max(a.photo.shape[:2]) <= MAX_PHOTO_SIDE
    assert a.photo.shape[0] % 2 == 0 and a.photo.shape[1] % 2 == 0 and a.photo.shape[0] == MAX_PHOTO_SIDE


def test_paste_back_keeps_the_photo_outside_the_face_box_whatever_the_crops_hold():
    """The mask is 0 outside the face box: any crop content (here noise and full-range flashes, 10 s of frames)
    leaves those pixels exactly as the photo has them, and the photo's size."""
    a = align_face(PHOTO, RES)
    paste = PasteBack(a)
    rng = np.random.default_rng(0)
    x0, y0, x1, y1 = a.to_photo(TRAINING_FRAMING.face_box)
    outside = np.ones(a.photo.shape[:2], bool)
    outside[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = False
    for block in range(16):  # 16 blocks of 16 frames
        crops = rng.integers(0, 256, (16, RES, RES, 3), dtype=np.uint8)
        crops[::2] = 255 * (block % 2)
        out = paste(crops)
        assert out.shape == (16, 600, 512, 3)
        assert (out[:, outside] == a.photo[outside]).all()
    # inside, the crops' change from the reference crop: the reference crop itself gives back the photo exactly,
    # with its own detail; the crop blended in whole (keep_detail=False) gives back the photo only at the crop's 128 px
    assert np.array_equal(paste(a.crop[None])[0], a.photo)
    whole = PasteBack(a, keep_detail=False)(a.crop[None])[0]
    assert 24 < _psnr(whole[~outside], a.photo[~outside]) < 40 and (whole[outside] == a.photo[outside]).all()
    darker = paste(np.clip(a.crop[None].astype(int) - 40, 0, 255).astype(np.uint8))[0]  # a change the model makes
    cx, cy = round(a.face[0]), round(a.face[1])
    assert darker[cy, cx].astype(int).sum() < a.photo[cy, cx].astype(int).sum() - 100  # shows in the face


def test_detect_face_is_none_on_flat_images():
    assert detect_face(np.full((200, 300, 3), 128, np.uint8)) is None


@pytest.mark.slow
def test_the_measured_training_framing_is_the_corpus_framing():
    """`TRAINING_FRAMING` is what `measure_training_framing` finds (fewer clips here: a looser tolerance)."""
    measured = measure_training_framing(num_clips=40, speech_clips=12)  # ~20 s (the constants: 200 and 40)
    assert abs(measured.face_size - TRAINING_FRAMING.face_size) < 0.03
    assert np.allclose(measured.face_center, TRAINING_FRAMING.face_center, atol=0.03)
    assert np.allclose(measured.mouth_box, TRAINING_FRAMING.mouth_box, atol=0.03)
    assert np.allclose(measured.face_box, TRAINING_FRAMING.face_box, atol=0.03)
    assert 0.3 < measured.detected < 0.9


# ---------------------------------------------------------------------------------------------- in the pipeline
def test_the_pipeline_pastes_a_photo_back_and_streams_it_as_it_calls(tiny_pipe):
    from .conftest import speech_like

    x = speech_like(1.2, 16000, seed=4)
    kw = {"num_inference_steps": 1, "generator": torch.Generator().manual_seed(0)}
    out = tiny_pipe([PHOTO], (x, 16000), **kw)
    res = tiny_pipe.resolution
    assert out.frames.shape == (30, 600, 512, 3) and out.crops.shape == (30, res, res, 3)
    a = align_face(PHOTO, res)
    x0, y0, x1, y1 = a.to_photo(TRAINING_FRAMING.face_box)
    outside = np.ones((600, 512), bool)
    outside[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = False
    assert (out.frames[:, outside] == a.photo[outside]).all()
    kw["generator"] = torch.Generator().manual_seed(0)
    chunks = ((x[i : i + 3001], 16000) for i in range(0, x.size, 3001))
    assert np.array_equal(np.concatenate(list(tiny_pipe.stream([PHOTO], chunks, **kw))), out.frames)
    kw["generator"] = torch.Generator().manual_seed(0)
    square = tiny_pipe([PHOTO], (x, 16000), paste_back=False, **kw)
    assert np.array_equal(square.frames, out.crops)
    stream = tiny_pipe.start_stream([PHOTO, landscape()], align_faces=True)
    assert [a.framing for a in stream.alignments] == ["face", "centre"] and stream.paste_back is not None
    with pytest.raises(NoFaceFoundError):
        tiny_pipe.start_stream([landscape()], align_faces="require")
    with pytest.raises(ValueError, match="align_faces must be"):
        tiny_pipe.start_stream([PHOTO], align_faces="yes")


def test_a_photo_without_a_face_still_makes_a_video_of_the_square_crop(tiny_pipe):
    from .conftest import speech_like

    with pytest.warns(NoFaceFoundWarning):
        out = tiny_pipe([landscape()], (speech_like(0.6, 16000), 16000), num_inference_steps=1)
    assert out.frames.shape[1:] == (tiny_pipe.resolution, tiny_pipe.resolution, 3)


def test_alignment_objects_are_accepted_as_references(tiny_pipe):
    a = align_face(PHOTO, tiny_pipe.resolution)
    stream = tiny_pipe.start_stream([a])
    assert stream.alignments[0] is a and isinstance(stream.alignments[0], FaceAlignment)


@pytest.mark.slow
def test_generate_writes_the_photo_or_the_crop_and_says_when_there_is_no_face(tmp_path, capsys):
    """The CLI on the bundled model: the photo's size by default, the model's square with --crop; a picture without
    a face says so on stderr and still makes its video."""
    from portrait_rt.cli import main
    from portrait_rt.loading import BUNDLED_MODEL
    from portrait_rt.video import probe

    speech = str(Path(__file__).resolve().parents[1] / "assets" / "examples" / "speech_b.wav")
    base = ["generate", "--model", str(BUNDLED_MODEL), "--threads", "1", "--audio", speech, "--steps", "2"]
    assert main([*base, "--ref", str(PHOTO), "--out", str(tmp_path / "photo.mp4")]) == 0
    assert probe(tmp_path / "photo.mp4")["size"] == (512, 600)
    assert main([*base, "--ref", str(PHOTO), "--crop", "--out", str(tmp_path / "crop.mp4")]) == 0
    assert probe(tmp_path / "crop.mp4")["size"] == (128, 128)
    capsys.readouterr()
    Image.fromarray(landscape()).save(tmp_path / "landscape.png")
    assert main([*base, "--ref", str(tmp_path / "landscape.png"), "--out", str(tmp_path / "land.mp4")]) == 0
    assert "warning: Reference 1: no face found" in capsys.readouterr().err
    assert probe(tmp_path / "land.mp4")["size"] == (128, 128)
