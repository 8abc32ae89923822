"""The framing the models were trained on, measured on the synthetic corpus (`portrait_rt.faces.TRAINING_FRAMING`).

Kept apart from `portrait_rt.faces` so the pipeline's code (exported beside the weights) does not carry the renderer.
"""

from __future__ import annotations

import numpy as np

from portrait_rt.data.synthetic import render_clip
from portrait_rt.faces import Box, TrainingFraming, detect_face


def measure_training_framing(
    num_clips: int = 200, speech_clips: int = 40, resolution: int = 128, seed: int = 0
) -> TrainingFraming:
    """Measure `TrainingFraming` on the synthetic corpus (train split): the detector on the first frame of
    `num_clips` silent renders (a closed mouth, as in a reference), the face and mouth boxes over every frame of
    `speech_clips` 2-second clips of speech (2nd / 98th percentiles of their edges)."""
    silence = np.zeros(3 * 640, np.float32)  # 3 frames: the renderer needs a few for its motion filters
    found = []
    for s in range(seed, seed + num_clips):
        face = detect_face(render_clip(s, resolution, audio=silence).frames[0])
        if face is not None:
            found.append(np.asarray(face) / resolution)
    if not found:
        raise RuntimeError("the detector found no corpus face: cannot measure the framing")
    cx, cy, size = np.median(found, axis=0)
    faces, mouths = [], []
    for s in range(seed, seed + speech_clips):
        clip = render_clip(s, resolution, duration=2.0)
        faces.append(clip.meta["face_box"] / resolution)
        mouths.append(clip.meta["mouth_box"] / resolution)

    def extent(boxes: list[np.ndarray]) -> Box:
        b = np.concatenate(boxes)  # (frames, 4)
        lo, hi = np.percentile(b[:, :2], 2, axis=0), np.percentile(b[:, 2:], 98, axis=0)
        return tuple(round(float(v), 4) for v in (*lo, *hi))

    return TrainingFraming(
        face_center=(round(float(cx), 4), round(float(cy), 4)),
        face_size=round(float(size), 4),
        face_box=extent(faces),
        mouth_box=extent(mouths),
        detected=round(len(found) / num_clips, 3),
    )
