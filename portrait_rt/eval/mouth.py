"""A mouth measure for any face: how much darker the mouth box has become than in the closed-mouth reference.

The colour key (`portrait_rt.eval.metrics.mouth_opening`) reads only the synthetic cartoons' reserved mouth colour.
This measure needs no colour: an open mouth shows the dark inside of the mouth, wherever it is a photograph or a
cartoon, and the training framing fixes where the mouth is (`portrait_rt.faces.TRAINING_FRAMING.mouth_box`, in the
aligned crop the model sees). Per frame:

1. the luma (Rec. 601) of the frame and of the reference crop (a closed mouth: the still the stream started from);
2. the reference's darkest luma within `shift` of each pixel (a grey erosion), so a head that moves by up to `shift`
   does not count as a change;
3. the mean, over the mouth box, of how far each pixel is darker than that: `mouth_darkening` (0..1 of full scale).

Validated on held-out synthetic clips against the renderer's ground-truth opening (`python -m portrait_rt eval
--validate N`, `darkening_r_*`), each against a closed-mouth render of its first frame: Pearson r 0.97 mean, 0.90
worst on 10 eval clips of 4 s whose heads move as in the corpus (the colour key: 0.996 / 0.994).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import grey_erosion

from portrait_rt.faces import TRAINING_FRAMING

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
SHIFT = 0.035  # the head motion tolerated, as a share of the crop's side (4 px at 128)
CHUNK_FRAMES = 16  # frames converted to float at once


def _pixel_box(box, height: int, width: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)


def mouth_darkening(
    frames: np.ndarray, reference: np.ndarray, box=TRAINING_FRAMING.mouth_box, shift: float = SHIFT
) -> np.ndarray:
    """Per frame (T,): the mean darkening of the mouth box against the closed-mouth `reference`, in [0, 1].

    `frames` uint8 (T, H, W, 3) and `reference` uint8 (H, W, 3), both square crops in the training framing (the
    model's own frames and its first reference crop: a `BlockRecord`'s `crop`, a stream's `reference_frames[0]`);
    `box` in units of the side. Frame by frame in effect (chunks only bound the float copies), so a stream can be
    measured block by block.
    """
    frames, reference = np.asarray(frames), np.asarray(reference)
    if frames.ndim != 4 or frames.shape[-1] != 3 or reference.shape != frames.shape[1:]:
        raise ValueError(
            f"frames (T, H, W, 3) and reference (H, W, 3) must match, got {frames.shape}, {reference.shape}"
        )
    h, w = reference.shape[:2]
    x0, y0, x1, y1 = _pixel_box(box, h, w)
    k = 2 * max(1, round(shift * h)) + 1
    floor = grey_erosion(reference.astype(np.float32) @ LUMA, size=(k, k), mode="nearest")[y0:y1, x0:x1]
    out = np.zeros(len(frames), np.float32)
    for start in range(0, len(frames), CHUNK_FRAMES):
        luma = frames[start : start + CHUNK_FRAMES, y0:y1, x0:x1].astype(np.float32) @ LUMA  # (t, h, w)
        out[start : start + len(luma)] = np.maximum(floor - luma, 0).mean(axis=(1, 2)) / 255.0
    return out
