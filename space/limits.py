"""The Space's fair-use limits (the library has none of these: it takes an hour of audio), from the environment.

Every limit is here, read by one parser (`setting`): an environment variable with a default sized for the bundled CPU
model on a small Space; a bad value stops the app at start with the variable's name.

File and Compare:
- `PORTRAIT_RT_MAX_AUDIO_S` (120): the longest speech clip File and Compare accept; a job then takes a few minutes.
- `PORTRAIT_RT_MAX_UPLOAD_MB` (50): the largest file an upload may be (images and audio).
- `PORTRAIT_RT_JOBS_PER_SESSION` (2): File/Compare jobs one browser tab (or API client) may have waiting or running.
- `PORTRAIT_RT_JOBS_PER_CLIENT` (4): the same for one client address, all its sessions together (one script opening
  many sessions cannot take every place).
- `PORTRAIT_RT_OFFLINE_QUEUE` (8): File/Compare jobs waiting in all; Gradio's queue keeps room beyond it for live.
- `PORTRAIT_RT_OUTPUT_TTL_S` (3600): our videos and plots are deleted when their tab closes, or after this long.

Live (both paths):
- `PORTRAIT_RT_LIVE_TIME_LIMIT_S` (120): one live stream's longest audio.
- `PORTRAIT_RT_LIVE_STREAMS` (2): Gradio-recorder live streams at once (all users).

The low-latency live socket (`space.realtime`):
- `PORTRAIT_RT_REALTIME_STREAMS` (measured per device: 2 on a 2-core CPU): streams at once;
  `PORTRAIT_RT_REALTIME_WAITING` (8): in line.
- `PORTRAIT_RT_REALTIME_BACKLOG_S` (3): audio waiting for the model; beyond it a stream is not real time any more
  and ends, saying so (memory per session stays bounded by it).
- `PORTRAIT_RT_REALTIME_PER_CLIENT` (2): sockets one client address may hold at once (starting, in line or talking).
- `PORTRAIT_RT_LIVE_MAX_PIXELS` (40 000 000): decoded pixels of all references of one start message, checked from
  the images' headers before decoding (the page sends each reference shrunk to 1024 px on its long side).
- `PORTRAIT_RT_START_DECODERS` (2): processes that decode the references of start messages (never the server's own,
  whose event loop serves every page); each reference is kept at most `REFERENCE_SIDE` (1024) px on its long side.
- `PORTRAIT_RT_ALLOWED_ORIGINS` (none): pages of other sites allowed to open the socket (comma-separated origins such
  as `https://example.com`, or `*`); the app's own pages always are.
- `PORTRAIT_RT_CLIENT_HEADER` (`x-forwarded-for` on a Hugging Face Space, else none): the request header, set by the
  proxy in front of the app, whose first address identifies a client; without one, the connection's own address.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path


def setting(name: str, default, kind=float, minimum: float = 0):
    """The environment variable `name` as a `kind` (int or float) of at least `minimum`, else `default`; a bad value
    is a `ValueError` naming the variable and what to set."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or value != value:  # (NaN)
        whole = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name}={raw!r}: set it to {whole} of at least {minimum:g}.")
    return value


MAX_AUDIO_S = setting("PORTRAIT_RT_MAX_AUDIO_S", 120.0, minimum=1)
MAX_UPLOAD_MB = setting("PORTRAIT_RT_MAX_UPLOAD_MB", 50.0, minimum=1)
JOBS_PER_SESSION = setting("PORTRAIT_RT_JOBS_PER_SESSION", 2, int, minimum=1)
JOBS_PER_CLIENT = setting("PORTRAIT_RT_JOBS_PER_CLIENT", 4, int, minimum=1)
OFFLINE_QUEUE = setting("PORTRAIT_RT_OFFLINE_QUEUE", 8, int, minimum=1)
OUTPUT_TTL_S = setting("PORTRAIT_RT_OUTPUT_TTL_S", 3600.0, minimum=1)

LIVE_TIME_LIMIT_S = setting("PORTRAIT_RT_LIVE_TIME_LIMIT_S", 120.0, minimum=1)
LIVE_MAX_BACKLOG_S = setting("PORTRAIT_RT_REALTIME_BACKLOG_S", 3.0, minimum=0.5)
LIVE_STREAMS = setting("PORTRAIT_RT_LIVE_STREAMS", 2, int, minimum=1)

REALTIME_WAITING = setting("PORTRAIT_RT_REALTIME_WAITING", 8, int, minimum=1)
REALTIME_PER_CLIENT = setting("PORTRAIT_RT_REALTIME_PER_CLIENT", 2, int, minimum=1)
LIVE_MAX_PIXELS = setting("PORTRAIT_RT_LIVE_MAX_PIXELS", 40_000_000, int, minimum=1_000_000)
START_DECODERS = setting("PORTRAIT_RT_START_DECODERS", 2, int, minimum=1)
REFERENCE_SIDE = 1024  # a live reference's long side once decoded (the page shrinks photos to this before sending)
ALLOWED_ORIGINS = [o.strip().rstrip("/") for o in os.environ.get("PORTRAIT_RT_ALLOWED_ORIGINS", "").split(",")]
ALLOWED_ORIGINS = [o for o in ALLOWED_ORIGINS if o]
CLIENT_HEADER = os.environ.get("PORTRAIT_RT_CLIENT_HEADER", "x-forwarded-for" if os.environ.get("SPACE_ID") else "")


def realtime_streams(default: int) -> int:
    """Low-latency live streams at once: `PORTRAIT_RT_REALTIME_STREAMS`, else `default` (the worker's, per device)."""
    return setting("PORTRAIT_RT_REALTIME_STREAMS", default, int, minimum=1)


def client_key(headers, peer: str | None) -> str:
    """Who a request comes from, for the per-client limits: the first address of `CLIENT_HEADER` where the proxy in
    front of the app sets it, else the connection's own address. `headers`: any mapping with `.get`."""
    forwarded = headers.get(CLIENT_HEADER) if CLIENT_HEADER else None
    if forwarded:
        return forwarded.split(",")[0].strip()
    return peer or "unknown"


def origin_allowed(headers) -> bool:
    """May a browser page from the request's `Origin` use the live socket? The app's own pages (the origin's host is
    the request's host: the proxy's `x-forwarded-host`, else `host`), the `ALLOWED_ORIGINS`, and clients that are not
    browsers (no `Origin` header: a script can send any header it likes, so only pages need the check)."""
    origin = (headers.get("origin") or "").rstrip("/")
    if not origin or "*" in ALLOWED_ORIGINS or origin in ALLOWED_ORIGINS:
        return True
    host = (headers.get("x-forwarded-host") or headers.get("host") or "").split(",")[0].strip()
    return origin.split("://", 1)[-1] == host


def _event_client(event) -> str:
    request = getattr(event, "request", None)
    if request is None:
        return "unknown"
    return client_key(request.headers, request.client.host if request.client else None)


def jobs_in(blocks, concurrency_id: str, session_hash: str | None = None, client: str | None = None) -> int:
    """Events waiting or running in `concurrency_id` (of one session, or of one client address, if given), from
    Gradio's own queue.

    (Gradio keeps no public per-session view of its queue; its `event_ids_to_events` holds every event from the
    moment it is queued until it finishes, each with the request that made it.)
    """
    events = [e for e in blocks._queue.event_ids_to_events.values() if e.concurrency_id == concurrency_id]
    if session_hash is not None:
        events = [e for e in events if e.session_hash == session_hash]
    if client is not None:
        events = [e for e in events if _event_client(e) == client]
    return len(events)


def offline_job_refusal(
    blocks, concurrency_id: str, session_hash: str | None, client: str | None = None
) -> str | None:
    """Why a new File/Compare job may not join the queue now (None: it may)."""
    if jobs_in(blocks, concurrency_id, session_hash) >= JOBS_PER_SESSION:
        return (
            f"You already have {JOBS_PER_SESSION} File/Compare jobs waiting or running; wait for one to finish, "
            "then press the button again."
        )
    if client is not None and jobs_in(blocks, concurrency_id, client=client) >= JOBS_PER_CLIENT:
        return (
            f"{JOBS_PER_CLIENT} File/Compare jobs from your address are already waiting or running; wait for one to "
            "finish, then press the button again."
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
