"""The Space's fair-use limits (the library has none of these: it takes an hour of audio), from the environment.

Each is an environment variable with a default sized for the bundled CPU model on a small Space:

- `PORTRAIT_RT_MAX_AUDIO_S` (120): the longest speech clip File and Compare accept; a job then takes a few minutes.
- `PORTRAIT_RT_MAX_UPLOAD_MB` (50): the largest file an upload may be (images and audio).
- `PORTRAIT_RT_JOBS_PER_SESSION` (2): File/Compare jobs one browser tab (or API client) may have waiting or running.
- `PORTRAIT_RT_OFFLINE_QUEUE` (8): File/Compare jobs waiting in all; Gradio's queue keeps room beyond it for live.
- `PORTRAIT_RT_OUTPUT_TTL_S` (3600): our videos and plots are deleted when their tab closes, or after this long.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


MAX_AUDIO_S = _env("PORTRAIT_RT_MAX_AUDIO_S", 120)
MAX_UPLOAD_MB = _env("PORTRAIT_RT_MAX_UPLOAD_MB", 50)
JOBS_PER_SESSION = int(_env("PORTRAIT_RT_JOBS_PER_SESSION", 2))
OFFLINE_QUEUE = int(_env("PORTRAIT_RT_OFFLINE_QUEUE", 8))
OUTPUT_TTL_S = _env("PORTRAIT_RT_OUTPUT_TTL_S", 3600)


def jobs_in(blocks, concurrency_id: str, session_hash: str | None = None) -> int:
    """Events waiting or running in `concurrency_id` (of one session, if given), from Gradio's own queue.

    (Gradio keeps no public per-session view of its queue; its `event_ids_to_events` holds every event from the
    moment it is queued until it finishes.)
    """
    events = list(blocks._queue.event_ids_to_events.values())
    return sum(
        e.concurrency_id == concurrency_id and (session_hash is None or e.session_hash == session_hash) for e in events
    )


def offline_job_refusal(blocks, concurrency_id: str, session_hash: str | None) -> str | None:
    """Why a new File/Compare job may not join the queue now (None: it may)."""
    if jobs_in(blocks, concurrency_id, session_hash) >= JOBS_PER_SESSION:
        return (
            f"You already have {JOBS_PER_SESSION} File/Compare jobs waiting or running; wait for one to finish, "
            "then press the button again."
        )
    if jobs_in(blocks, concurrency_id) >= OFFLINE_QUEUE:
        return f"{OFFLINE_QUEUE} File/Compare jobs are already waiting; try again in a few minutes."
    return None


def forget_session(root: str | os.PathLike, session_hash: str | None) -> None:
    """Delete a session's outputs (its tab closed)."""
    shutil.rmtree(session_folder(root, session_hash), ignore_errors=True)


def session_folder(root: str | os.PathLike, session_hash: str | None) -> Path:
    """The folder for one session's outputs under `root` (created); older sessions' folders are swept first."""
    sweep(root, OUTPUT_TTL_S)
    name = hashlib.sha256((session_hash or "").encode()).hexdigest()[:16]  # the hash comes from the client
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sweep(root: str | os.PathLike, max_age_s: float) -> None:
    """Delete the folders under `root` not modified for `max_age_s` seconds."""
    now = time.time()
    for folder in Path(root).iterdir():
        try:
            if folder.is_dir() and now - folder.stat().st_mtime > max_age_s:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:
            pass
