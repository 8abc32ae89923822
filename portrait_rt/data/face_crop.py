"""Face-following portrait crops for `prepare`: find the face, follow it smoothly, frame the head and shoulders.

The detector is OpenCV's Haar frontal-face cascade, whose weights ship inside the `opencv-python-headless` 4.x wheel
(`cv2.data.haarcascades`): nothing is downloaded. The 5.x wheels ship neither the cascade files nor
`cv2.CascadeClassifier` (their `FaceDetectorYN` needs YuNet weights that are not in the wheel), hence the `<5` pin.
OpenCV is imported here only, and only when a face crop is asked for.

From detections to one crop per frame (`plan_face_crops`):
1. a detection on every `detect_every`-th frame: the largest face of a histogram-equalised grey copy;
2. a detection whose centre or size jumps away from the median of its neighbours is dropped (a false positive);
3. where no face was seen for more than `max_gap_seconds`, the video is cut and those frames are skipped;
4. inside a span with a face, its centre and size are interpolated to every frame and smoothed over time (a line
   fitted with Gaussian weights, sigma `smooth_seconds`): the crop follows a speaker who drifts or steps aside,
   while the head motion a talking-portrait model must learn (nods, turns, sways) stays in the picture instead of
   being cancelled by the crop;
5. framing: a square `scale` x the face size, the face centre at `center_y` of its height (head and shoulders, as
   the synthetic corpus and the paper's portraits are framed), moved inside the frame where it would cross an
   edge, and shrunk to the frame's short side where it is larger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import correlate1d


@dataclass
class FaceFraming:
    """How `prepare --crop face` frames and follows the face (defaults: head and shoulders, as the corpus)."""

    scale: float = 2.0  # crop side / face size (the cascade's box spans about brows to chin)
    center_y: float = 0.44  # height of the face centre in the crop, from its top (room for the shoulders below)
    smooth_seconds: float = 1.0  # Gaussian sigma of the crop path over time
    detect_every: int = 5  # frames between detections (5 per second at 25 fps)
    max_gap_seconds: float = 1.0  # no face for longer than this: cut the video there
    min_face: float = 0.1  # the smallest face searched for, as a share of the frame's short side


@dataclass
class CropSpan:
    """Frames [start, end) of a video with a face, and their crops: `boxes` int (end - start, 3) of x, y, side."""

    start: int
    end: int
    boxes: np.ndarray


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade (weights from the opencv-python-headless wheel); one face per image."""

    CASCADE = "haarcascade_frontalface_default.xml"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 4):
        try:
            import cv2
        except ImportError as e:
            raise ImportError(
                "The face detector needs OpenCV: pip install 'opencv-python-headless>=4.8,<5' (or do without it: "
                "`prepare --crop centre` / `--box`, or align_faces=False for reference photos)."
            ) from e
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = Path(folder) / self.CASCADE
        if not hasattr(cv2, "CascadeClassifier") or not path.is_file():
            raise ImportError(
                f"OpenCV {cv2.__version__} ships no Haar cascade ({self.CASCADE}; the 5.x wheels dropped them): "
                "pip install 'opencv-python-headless>=4.8,<5' (or `prepare --crop centre` / `--box`; "
                "align_faces=False)."
            )
        self._cv2, self._cascade = cv2, cv2.CascadeClassifier(str(path))
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors

    def __call__(self, gray: np.ndarray, min_size: int = 24, max_size: int | None = None) -> np.ndarray | None:
        """The largest face of a uint8 grey image (H, W) as (centre x, centre y, size) in its pixels, or None; faces
        from `min_size` to `max_size` (None: any) pixels are searched."""
        faces = self._cascade.detectMultiScale(
            self._cv2.equalizeHist(np.ascontiguousarray(gray)),
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(max(24, min_size), max(24, min_size)),  # the cascade's own window is 24 px
            maxSize=(max_size, max_size) if max_size else (0, 0),  # (0, 0): no limit
        )
        if len(faces) == 0:
            return None
        x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
        return np.array([x + w / 2, y + h / 2, (w + h) / 2], np.float64)

    def windows(self, gray: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
        """Every window the cascade accepts (before grouping neighbours), as rows (centre x, centre y, size) (K, 3),
        for sizes `min_size` to `max_size` in steps of `scale_factor`."""
        found = self._cascade.detectMultiScale(
            self._cv2.equalizeHist(np.ascontiguousarray(gray)),
            scaleFactor=self.scale_factor,
            minNeighbors=0,
            minSize=(max(24, min_size), max(24, min_size)),
            maxSize=(max_size, max_size),
        )
        found = np.asarray(found, np.float64).reshape(-1, 4)
        return np.stack([found[:, 0] + found[:, 2] / 2, found[:, 1] + found[:, 3] / 2, found[:, 2]], axis=1)


def reject_jumps(faces: np.ndarray, window: int = 5, tolerance: float = 0.5) -> np.ndarray:
    """Mask of the detections (rows of `faces` (K, 3): cx, cy, size; NaN rows = none) to keep: those whose centre
    lies within `tolerance` x size of the median of the `window` detections around them, and whose size is within a
    factor 1 + `tolerance` of theirs."""
    found = np.flatnonzero(~np.isnan(faces[:, 0]))
    keep = np.zeros(len(faces), bool)
    for j, k in enumerate(found):
        near = faces[found[max(0, j - window // 2) : j + window // 2 + 1]]
        cx, cy, size = np.median(near, axis=0)
        moved = np.hypot(faces[k, 0] - cx, faces[k, 1] - cy) / size
        keep[k] = moved <= tolerance and abs(np.log(faces[k, 2] / size)) <= np.log1p(tolerance)
    return keep


def smooth_path(path: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth a path (T, K) over time: at each frame, the value of a line fitted to the frames around it with
    Gaussian weights (sigma in frames). A steady drift stays on course up to the ends of the span, which a plain
    Gaussian would pull towards the middle by about sigma x the speed."""
    if sigma <= 0 or len(path) < 2:
        return path
    d = np.arange(-int(4 * sigma), int(4 * sigma) + 1, dtype=np.float64)
    g = np.exp(-0.5 * (d / sigma) ** 2)

    def window_sum(x: np.ndarray, weights: np.ndarray) -> np.ndarray:  # sum_d weights(d) x[t + d], inside the span
        return correlate1d(x, weights, axis=0, mode="constant", cval=0.0)

    ones = np.ones((len(path), 1))
    s0, s1, s2 = (window_sum(ones, g * d**p) for p in range(3))
    y0, y1 = window_sum(path, g), window_sum(path, g * d)
    return (s2 * y0 - s1 * y1) / (s0 * s2 - s1**2)  # the fitted line's value at d = 0


def portrait_boxes(path: np.ndarray, frame_size: tuple[int, int], framing: FaceFraming) -> np.ndarray:
    """Face path (T, 3) of (cx, cy, size) in a `frame_size` = (W, H) frame -> square crops int (T, 3) of x, y, side."""
    width, height = frame_size
    side = np.minimum(np.round(framing.scale * path[:, 2]), min(width, height)).astype(np.int64)
    x = np.clip(np.round(path[:, 0] - side / 2), 0, width - side).astype(np.int64)
    y = np.clip(np.round(path[:, 1] - framing.center_y * side), 0, height - side).astype(np.int64)
    return np.stack([x, y, side], axis=1)


def plan_face_crops(
    frames: np.ndarray,
    faces: np.ndarray,
    num_frames: int,
    frame_size: tuple[int, int],
    framing: FaceFraming,
    fps: float = 25.0,
) -> tuple[list[CropSpan], list[tuple[int, int]]]:
    """Detections `faces` (K, 3) (cx, cy, size, NaN = none) on frames `frames` (K,) of a `num_frames` video ->
    (spans with a face and their smoothed crops, the frame ranges [a, b) without one). Steps in the module docstring.
    """
    keep = reject_jumps(faces)
    at, found = frames[keep], faces[keep]
    spans: list[CropSpan] = []
    if len(at):
        groups = np.split(np.arange(len(at)), np.flatnonzero(np.diff(at) > framing.max_gap_seconds * fps) + 1)
        for g in groups:
            # From the first to the last frame a face was seen on; to the video's end after its last detection.
            start, end = int(at[g[0]]), int(at[g[-1]]) + 1 if at[g[-1]] < frames[-1] else num_frames
            t = np.arange(start, end)
            path = np.stack([np.interp(t, at[g], found[g, k]) for k in range(3)], axis=1)  # (T, 3)
            path = smooth_path(path, framing.smooth_seconds * fps)
            spans.append(CropSpan(int(start), int(end), portrait_boxes(path, frame_size, framing)))
    gaps, cursor = [], 0
    for span in spans + [CropSpan(num_frames, num_frames, np.zeros((0, 3), np.int64))]:
        if span.start > cursor:
            gaps.append((cursor, span.start))
        cursor = span.end
    return spans, gaps
