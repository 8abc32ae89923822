"""A visitor's photograph in, and back out: the face found, cropped to the framing the model was trained on, and the
animated crop pasted back into the photo.

    alignment = align_face("me.jpg", resolution=128)    # FaceAlignment: .crop (128, 128, 3), .photo, .box, .face
    paste = PasteBack(alignment)                        # once per stream
    photo_frames = paste(crop_frames)                   # (n, 128, 128, 3) -> (n, H, W, 3), per block

1. The framing (`TRAINING_FRAMING`) is measured on the synthetic corpus itself: the same
   face detector run on corpus renders gives where its box sits in the 128 px frame and how large it is, and the
   renderer's own boxes give where the face outline and the mouth (open or closed) are
   (`portrait_rt.eval.framing.measure_training_framing`; a test measures it again).
2. Detection: OpenCV's frontal-face Haar cascade (`portrait_rt.data.face_crop.HaarFaceDetector`; its weights ship in
   the opencv-python-headless 4.x wheel, nothing is downloaded), the largest face, on a copy at most `DETECT_SIDE`
   pixels long. The square crop puts that box where the detector puts it on corpus faces; where the square reaches
   past the photo's edge, the edge pixels are repeated.
3. Which references are searched: a reference that is already a square at the model's resolution is taken as framed
   (the corpus, the cartoon examples, a crop made earlier); any other is searched. No face found: a
   `NoFaceFoundWarning` (or `NoFaceFoundError` with `require_face`) and the centre crop, as without alignment.
4. Paste-back (`PasteBack`): what each frame's crop changed from the reference crop, upsampled (bilinear: a quarter
   of bicubic's time) into the photo over the training framing's face box, added with a mask that is 1 on the face
   and falls smoothly to exactly 0 at the box's edge (a superellipse inscribed in the box, feathered): the photo
   keeps its own detail where the model keeps the face still, and every pixel outside the face box is the photo's
   own. One batched `grid_sample` and one `addcmul` per block; the sampling grid, the mask and the upsampled
   reference are made once per stream. Only for a reference whose face was found: without a face (or without
   alignment) the result is the square crop the model made.

The photo is kept at its own size, capped at `MAX_PHOTO_SIDE` on the long side, with even sides (h.264 needs them).
"""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from portrait_rt.images import load_photo, reference_list

MAX_PHOTO_SIDE = 1024  # a photo's result is at most this large on its long side
DETECT_SIDE = 640  # faces are searched on a copy at most this large (the cascade's time grows with the pixels)
MIN_FACE = 0.1  # the smallest face searched for, as a share of the photo's short side
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


class NoFaceFoundWarning(UserWarning):
    """A reference photo without a face the detector could find: it was centre-cropped instead."""


class NoFaceFoundError(ValueError):
    """A reference photo without a face, where one was required (`require_face=True`)."""


@dataclass(frozen=True)
class TrainingFraming:
    """Where things sit in the square frame the model was trained on, in units of its side (0..1).

    `face_center`, `face_size`: the face detector's box on corpus faces (its centre; its side). `face_box`: the face
    outline from brow to chin and cheek to cheek, with the jaw dropped as far as speech drops it; `mouth_box`: the
    lips, open or closed (both from the renderer's own boxes). `detected`: the share of corpus faces it found.
    """

    face_center: tuple[float, float]
    face_size: float
    face_box: Box
    mouth_box: Box
    detected: float


# `portrait_rt.eval.framing.measure_training_framing(num_clips=200, speech_clips=40)`: 128 px renders of the train
# split (the corpus the bundled model learnt from); the detector's box is the median over the 115 of 200 faces it
# found, the boxes the 2nd / 98th percentiles over 40 clips of 2 s of speech (head motion included).
TRAINING_FRAMING = TrainingFraming(
    face_center=(0.501, 0.4354),
    face_size=0.508,
    face_box=(0.2538, 0.106, 0.7511, 0.7582),
    mouth_box=(0.3503, 0.4864, 0.6413, 0.6996),
    detected=0.575,
)


# ---------------------------------------------------------------------------------------------------- detection
_DETECTOR_LOCK = threading.Lock()  # one cascade object, used by one thread at a time


@functools.lru_cache(maxsize=2)
def _detector(scale_factor: float, min_neighbors: int):
    from portrait_rt.data.face_crop import HaarFaceDetector

    return HaarFaceDetector(scale_factor, min_neighbors)


def detect_face(image: np.ndarray) -> tuple[float, float, float] | None:
    """The largest face in a uint8 RGB image (H, W, 3) as (centre x, centre y, box side) in its pixels, or None.

    Searched on a grey copy at most `DETECT_SIDE` pixels long, for faces of at least `MIN_FACE` of the short side:
    first over all sizes in steps of 10% (the cascade's usual, `HaarFaceDetector`), then refined around the face
    found: the mean of every window the cascade accepts, in steps of 3%, from 0.75 to 1.35 x its size and within 30%
    of its side from its centre (one grouped box's side jumps by up to 10% as the picture is cropped or moved; this
    mean by about half as much).
    """
    h, w = image.shape[:2]
    scale = min(1.0, DETECT_SIDE / max(h, w))
    small = Image.fromarray(image).convert("L")
    if scale < 1.0:
        small = small.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    gray = np.asarray(small)
    with _DETECTOR_LOCK:
        face = _detector(1.1, 4)(gray, min_size=round(MIN_FACE * min(gray.shape)))
        if face is None:
            return None
        cx, cy, size = face
        windows = _detector(1.03, 0).windows(gray, round(0.75 * size), round(1.35 * size))
    near = np.hypot(windows[:, 0] - cx, windows[:, 1] - cy) < 0.3 * size
    if near.any():
        face = windows[near].mean(axis=0)
    cx, cy, size = (float(v) / scale for v in face)
    return cx, cy, size


# ---------------------------------------------------------------------------------------------------- alignment
@dataclass
class FaceAlignment:
    """One reference: the photo as given (capped), the square crop the model sees, and where that crop lies.

    `box` = (x0, y0, side): the crop's square in photo pixels (it may reach past the photo's edges). `framing`:
    "face" (a face found and the crop aligned on it), "as_is" (already a square at the model's size: taken as
    framed), or "centre" (the centre crop: no face found, or alignment off).
    """

    photo: np.ndarray  # uint8 (H, W, 3)
    crop: np.ndarray  # uint8 (resolution, resolution, 3)
    box: tuple[int, int, int]
    framing: str
    face: tuple[float, float, float] | None = None  # the detector's face (cx, cy, side) in photo pixels

    @property
    def face_found(self) -> bool:
        return self.framing == "face"

    @property
    def in_training_framing(self) -> bool:
        """Whether the crop is framed as the corpus (a face found, or given so): its mouth is in the mouth box."""
        return self.framing in ("face", "as_is")

    def to_photo(self, box: Box) -> Box:
        """A box in crop units (0..1, e.g. `TRAINING_FRAMING.mouth_box`) -> photo pixels (x0, y0, x1, y1)."""
        x0, y0, side = self.box
        return (x0 + box[0] * side, y0 + box[1] * side, x0 + box[2] * side, y0 + box[3] * side)


def cap_photo(image: Image.Image, max_side: int = MAX_PHOTO_SIDE) -> np.ndarray:
    """An RGB PIL image -> uint8 (H, W, 3) at most `max_side` on its long side, with even sides (h.264)."""
    w, h = image.size
    scale = min(1.0, max_side / max(w, h))
    size = (max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2))
    if size != (w, h):
        image = image.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def face_square(face: tuple[float, float, float], framing: TrainingFraming = TRAINING_FRAMING) -> tuple[int, int, int]:
    """The square (x0, y0, side) in which the detected face (cx, cy, side) sits as the detector's box sits on corpus
    faces."""
    cx, cy, size = face
    side = size / framing.face_size
    return round(cx - framing.face_center[0] * side), round(cy - framing.face_center[1] * side), max(1, round(side))


def crop_square(photo: np.ndarray, box: tuple[int, int, int], resolution: int) -> np.ndarray:
    """The square `box` (x0, y0, side) of `photo` (edge pixels repeated past its edges) at `resolution` (Lanczos)."""
    x0, y0, side = box
    h, w = photo.shape[:2]
    pad = ((max(0, -y0), max(0, y0 + side - h)), (max(0, -x0), max(0, x0 + side - w)), (0, 0))
    padded = np.pad(photo, pad, mode="edge") if any(p for p in pad[:2] for p in p) else photo
    ox, oy = x0 + pad[1][0], y0 + pad[0][0]
    square = Image.fromarray(np.ascontiguousarray(padded[oy : oy + side, ox : ox + side]))
    return np.asarray(square.resize((resolution, resolution), Image.Resampling.LANCZOS), dtype=np.uint8)


def no_face_message(name: str = "Reference", hint: str = "") -> str:
    """What a user is told about the reference `name` in which no face was found (`hint`: how to turn the search off
    where they can)."""
    return (
        f"{name}: no face found (the detector looks for an upright, frontal face at least {MIN_FACE:.0%} of the "
        "picture's short side); the centre of the picture is used instead, so the mouth may not be where the model "
        f"paints it. Upload a photo with the face clearly visible{hint}."
    )


def align_face(
    image,
    resolution: int,
    align: bool = True,
    require_face: bool = False,
    name: str = "Reference",
    warn: bool = True,
    framing: TrainingFraming = TRAINING_FRAMING,
) -> FaceAlignment:
    """One reference (path, PIL image or array) -> `FaceAlignment`, its crop framed as the training corpus.

    `align=False`: the centre crop, no search. No face found: `NoFaceFoundWarning` (naming the reference as `name`;
    `warn=False`: none, the caller tells its user itself from `framing`) and the centre crop, or `NoFaceFoundError`
    with `require_face`. A FaceAlignment at this resolution passes through.
    """
    if isinstance(image, FaceAlignment) and image.crop.shape[0] == resolution:
        return image
    photo = cap_photo(load_photo(image.photo if isinstance(image, FaceAlignment) else image))
    h, w = photo.shape[:2]
    if h == w == resolution:
        return FaceAlignment(photo, photo, (0, 0, resolution), "as_is")
    face = detect_face(photo) if align else None
    if face is not None:
        box, kind = face_square(face, framing), "face"
    else:
        side = min(h, w)
        box, kind = ((w - side) // 2, (h - side) // 2, side), "centre"
        if align and require_face:
            raise NoFaceFoundError(no_face_message(name))
        if align and warn:
            hint = ", or pass align_faces=False (--no-align) to use the centre crop on purpose"
            warnings.warn(no_face_message(name, hint), NoFaceFoundWarning, stacklevel=2)
    return FaceAlignment(photo, crop_square(photo, box, resolution), box, kind, face)


def align_references(images, resolution: int, align: bool = True, require_face: bool = False) -> list[FaceAlignment]:
    """1-3 references (a single one or a list; paths, PIL images, arrays or `FaceAlignment`s) -> one
    `FaceAlignment` each, every reference aligned on its own face (`align_face`)."""
    return [
        align_face(im, resolution, align, require_face, name=f"Reference {i}")
        for i, im in enumerate(reference_list(images), start=1)
    ]


# ---------------------------------------------------------------------------------------------------- paste-back
def _smoothstep(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(0, 1)
    return t * t * (3 - 2 * t)


class PasteBack:
    """Animated crops -> the photo: what each frame's crop changed, upsampled into the face box and blended in with a
    feathered mask.

    `keep_detail` (default): the photo plus the change of each crop from the reference crop, masked:
    `photo + mask * (up(crop) - up(reference crop))`. Where the model keeps the face still, the photo keeps its own
    detail (a 128 px crop upsampled 3-4 times would blur glasses, hair and skin); where the mouth moves, the change
    is added. False: the upsampled crop itself blended in, `photo + mask * (up(crop) - photo)` (for a model that
    moves the head: the still photo's detail would not follow it). Both are exactly the photo outside the face box.

    Built once per stream from the first reference's `FaceAlignment` (with a face found); called per block.
    `feather`: the width of the mask's fall from 1 to 0, in units of the crop's side; `mode`: `grid_sample`'s.
    """

    def __init__(
        self,
        alignment: FaceAlignment,
        framing: TrainingFraming = TRAINING_FRAMING,
        feather: float = 0.06,
        mode: str = "bilinear",
        keep_detail: bool = True,
    ):
        self.photo, self.mode = alignment.photo, mode
        h, w = self.photo.shape[:2]
        x0, y0, side = alignment.box
        fx0, fy0, fx1, fy1 = alignment.to_photo(framing.face_box)
        # 1. The region written: the face box's pixels inside the photo.
        self.region = (max(0, int(np.floor(fy0))), min(h, int(np.ceil(fy1))), max(0, int(np.floor(fx0))))
        self.region += (min(w, int(np.ceil(fx1))),)
        ry0, ry1, rx0, rx1 = self.region
        if ry1 <= ry0 or rx1 <= rx0:
            raise ValueError("The face box lies outside the photo: nothing to paste back.")
        # 2. Sampling grid: photo pixel centres -> the crop's normalised coordinates (align_corners=False).
        xs = (torch.arange(rx0, rx1, dtype=torch.float32) + 0.5 - x0) / side  # crop units, (rw,)
        ys = (torch.arange(ry0, ry1, dtype=torch.float32) + 0.5 - y0) / side  # (rh,)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        self.grid = torch.stack([gx, gy], dim=-1)[None] * 2 - 1  # (1, rh, rw, 2)
        # 3. Mask: a superellipse (exponent 4) inscribed in the face box, 1 inside, falling to 0 at its edge.
        bx0, by0, bx1, by1 = framing.face_box
        cu, cv, hu, hv = (bx0 + bx1) / 2, (by0 + by1) / 2, (bx1 - bx0) / 2, (by1 - by0) / 2
        rho = (((gx - cu) / hu).abs() ** 4 + ((gy - cv) / hv).abs() ** 4) ** 0.25
        self.mask = _smoothstep((1 - rho) * min(hu, hv) / feather)  # (rh, rw)
        # 4. What each frame adds to: photo - mask * (up(reference crop) or the photo itself), made once.
        photo = torch.from_numpy(self.photo[ry0:ry1, rx0:rx1].astype(np.float32)).permute(2, 0, 1)  # (3, rh, rw)
        under = self._upsample(alignment.crop[None])[0] if keep_detail else photo
        self.base = photo - self.mask * under

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the frames it makes."""
        return self.photo.shape[1], self.photo.shape[0]

    def _upsample(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 crops (n, res, res, 3) -> float (n, 3, rh, rw): sampled at the face box's photo pixels."""
        frames = frames if frames.flags.writeable else frames.copy()  # torch wants a writable array
        crops = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (n, 3, res, res)
        grid = self.grid.expand(len(frames), -1, -1, -1)
        return torch.nn.functional.grid_sample(crops, grid, mode=self.mode, padding_mode="border", align_corners=False)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 crops (n, res, res, 3) -> uint8 photo frames (n, H, W, 3), all frames at once."""
        n = len(frames)
        blended = torch.addcmul(self.base, self.mask, self._upsample(frames))  # base + mask * up(crop)
        blended = blended.round_().clamp_(0, 255).to(torch.uint8)
        out = np.repeat(self.photo[None], n, axis=0)  # (n, H, W, 3)
        ry0, ry1, rx0, rx1 = self.region
        out[:, ry0:ry1, rx0:rx1] = blended.permute(0, 2, 3, 1).numpy()
        return out
