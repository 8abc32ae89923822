import io

import numpy as np
import pytest
from PIL import Image

from portrait_rt.images import load_image, load_reference_images


def _img(mode="RGB", size=(80, 60)):
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, : size[0] // 2] = (200, 40, 40)
    return Image.fromarray(arr).convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_modes_become_rgb(mode):
    out = load_image(_img(mode), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_alpha_composited_on_white():
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert (load_image(rgba, 16) == 255).all()


def test_exif_rotation(tmp_path):
    im = _img(size=(80, 40))  # left half red, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "r.jpg"
    im.save(path, exif=exif)
    out = load_image(path, 40)
    # after rotation the red half is on top
    assert out[:10, 20, 0].min() > 150 and out[-10:, 20, 0].max() < 60


@pytest.mark.parametrize(
    "arr",
    [
        np.random.rand(50, 60, 3),
        np.random.rand(50, 60),
        (np.random.rand(3, 50, 60) * 255).astype(np.uint8),
        (np.random.rand(50, 60, 4) * 65535).astype(np.uint16),
        np.zeros((50, 60, 1), np.uint8),
    ],
)
def test_arrays(arr):
    assert load_image(arr, 24).shape == (24, 24, 3)


def test_center_crop_keeps_middle():
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, 100:200] = 255  # white middle third
    assert load_image(arr, 50).mean() > 240


def test_reference_counts_and_errors(tmp_path):
    assert load_reference_images(_img(), 16).shape == (1, 16, 16, 3)
    assert load_reference_images([_img(), None, _img()], 16).shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="1 to 3"):
        load_reference_images([_img()] * 4, 16)
    with pytest.raises(ValueError, match="at least one"):
        load_reference_images([], 16)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not an image"):
        load_reference_images([junk], 16)
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros((0, 5, 3), np.uint8), 16)
    with pytest.raises(ValueError, match="does not exist"):
        load_image(tmp_path / "missing.png", 16)


def test_huge_image_rejected_before_decoding(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (9000, 5000)).save(buf, format="PNG")
    path = tmp_path / "huge.png"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="megapixels|too large"):
        load_image(path, 16)
