"""Clip shards: the on-disk format every training loader reads (prepared user videos and the rendered corpus).

    root/
      index.json               {"resolution", "fps", "sample_rate", "clips": [{"name", "num_frames", ...}], "skipped"}
      <name>/frames.npy        uint8 (T, H, W, 3) at 25 fps, square `resolution`
      <name>/audio.npy         float32 (T * 640,) mono at 16 kHz: frame i <-> samples [640 i, 640 (i + 1))
      <name>/<truth>.npy       rendered clips only: per-frame truth (T, ...), e.g. mouth_open, mouth_box (`TRUTH`)

Plain `.npy` files are memory-mapped, so a loader touches only the frames of the windows it samples, and a corpus
is rendered once instead of once per step. `index.json` is rewritten after each clip, so an interrupted writer
resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from portrait_rt.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

logger = logging.getLogger(__name__)

INDEX = "index.json"
# The rendered corpus's per-frame truth kept beside its frames (what the renderer knows and no pixel key must recover)
TRUTH = ("mouth_open", "mouth_spread", "head_pose", "head_translation", "blink", "face_box", "head_box", "mouth_box")


class ClipStore:
    """Read and append clips of a shard folder (see the module docstring for the layout).

    Args:
        root: the folder; created by `ClipStore.create`.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        path = self.root / INDEX
        if not path.is_file():
            raise ValueError(
                f"{str(self.root)!r} is not a clip shard folder (no {INDEX}); make one with "
                "`python -m portrait_rt prepare` or `portrait_rt.data.shards.write_synthetic_shards`."
            )
        self.index = json.loads(path.read_text())
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def create(cls, root: str | os.PathLike, resolution: int, **info) -> ClipStore:
        """Open `root`, creating an empty store for `resolution` if it has no index yet."""
        root = Path(root)
        if not (root / INDEX).is_file():
            root.mkdir(parents=True, exist_ok=True)
            index = {"resolution": int(resolution), "fps": FPS, "sample_rate": SAMPLE_RATE, "clips": [], "skipped": []}
            (root / INDEX).write_text(json.dumps({**index, **info}, indent=1))
        store = cls(root)
        if store.resolution != resolution:
            raise ValueError(f"{str(root)!r} holds {store.resolution}px clips; use another folder for {resolution}px.")
        return store

    @property
    def resolution(self) -> int:
        return int(self.index["resolution"])

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.index["clips"]]

    def __len__(self) -> int:
        return len(self.index["clips"])

    def num_frames(self, i: int) -> int:
        return int(self.index["clips"][i]["num_frames"])

    def info(self, i: int) -> dict:
        return self.index["clips"][i]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip `i` as (frames uint8 (T, H, W, 3) memory-mapped, audio float32 (T * 640,))."""
        if i not in self._cache:
            folder = self.root / self.index["clips"][i]["name"]
            self._cache[i] = (np.load(folder / "frames.npy", mmap_mode="r"), np.load(folder / "audio.npy"))
        return self._cache[i]

    def truth(self, i: int, name: str) -> np.ndarray:
        """Clip `i`'s per-frame truth `name` (T, ...) (rendered clips only: see `TRUTH`)."""
        path = self.root / self.index["clips"][i]["name"] / f"{name}.npy"
        if not path.is_file():
            raise KeyError(f"clip {self.names[i]!r} has no {name!r} truth (only rendered clips do: {TRUTH})")
        return np.load(path)

    def _save_index(self) -> None:
        tmp = self.root / f".{INDEX}.partial"
        tmp.write_text(json.dumps(self.index, indent=1))
        os.replace(tmp, self.root / INDEX)

    def add(
        self, name: str, frames: np.ndarray, audio: np.ndarray, truth: dict[str, np.ndarray] | None = None, **info
    ) -> None:
        """Append a clip: frames uint8 (T, R, R, 3); audio float32 at 16 kHz, trimmed/padded to T * 640 samples;
        `truth`: per-frame arrays (T, ...) saved beside them (`truth(i, name)` reads one back)."""
        frames = np.asarray(frames)
        r = self.resolution
        if frames.ndim != 4 or frames.shape[1:] != (r, r, 3) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, {r}, {r}, 3), got {frames.dtype} {frames.shape}.")
        n = frames.shape[0] * SAMPLES_PER_FRAME
        audio = np.asarray(audio, np.float32).reshape(-1)
        audio = np.pad(audio[:n], (0, max(0, n - audio.size)))
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "frames.npy", frames)
        np.save(folder / "audio.npy", audio)
        for key, value in (truth or {}).items():
            value = np.asarray(value)
            if value.shape[:1] != frames.shape[:1]:
                raise ValueError(f"truth {key!r} has {value.shape[:1]} frames, the clip {frames.shape[0]}.")
            np.save(folder / f"{key}.npy", value)
        self.index["clips"] = [c for c in self.index["clips"] if c["name"] != name]
        self.index["clips"].append({"name": name, "num_frames": int(frames.shape[0]), **info})
        self._save_index()

    def skip(self, source: str, reason: str) -> None:
        """Record (and log) a source that could not be used, with the reason."""
        logger.warning("skipping %s: %s", source, reason)
        self.index["skipped"] = [s for s in self.index.get("skipped", []) if s["source"] != source]
        self.index["skipped"].append({"source": source, "reason": reason})
        self._save_index()


def write_synthetic_shards(
    root: str | os.PathLike,
    num_clips: int,
    resolution: int = 128,
    split: str = "train",
    seed: int = 0,
    duration: float | None = None,
    photo_fraction: float = 0.0,
    workers: int = 1,
) -> ClipStore:
    """Render `num_clips` synthetic corpus clips (seeds `seed`, `seed + 1`, ...) into a shard folder, once.

    Clips already in the folder are kept, so an interrupted render resumes. `photo_fraction` of them (chosen per seed
    by `photo_look.look_for`) in the photographic look; each clip's look is in the index. `workers` > 1 renders in
    that many processes (the same clips: each depends on its seed alone).
    """
    from portrait_rt.data.photo_look import look_for

    look_for(seed, split, photo_fraction)  # a bad fraction fails before anything is written
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    store = ClipStore.create(root, resolution, source="synthetic", split=split)
    have = set(store.names)
    jobs = [(seed + k, resolution, duration, split, photo_fraction) for k in range(num_clips)]
    jobs = [j for j in jobs if f"{split}_{j[0]:06d}" not in have]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers)
        rendered = pool.map(_render_for_shards, jobs)
    else:
        pool, rendered = None, map(_render_for_shards, jobs)
    try:
        for (s, *_), (frames, audio, truth, look) in zip(jobs, rendered):  # in seed order, as they finish
            store.add(f"{split}_{s:06d}", frames, audio, truth, seed=s, split=split, look=look)
            logger.info("rendered %s_%06d (%d frames, %s)", split, s, frames.shape[0], look)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return store


def _render_for_shards(job) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], str]:
    from portrait_rt.data.photo_look import look_for
    from portrait_rt.data.synthetic import render_clip

    s, resolution, duration, split, photo_fraction = job
    look = look_for(s, split, photo_fraction)
    clip = render_clip(s, resolution=resolution, duration=duration, split=split, look=look)
    truth = {key: clip.meta[key] for key in (*TRUTH, "mouth_interior_area") if key in clip.meta}
    return clip.frames, clip.audio, truth, look
