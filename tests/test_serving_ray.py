"""Live conversations on a local Ray Serve cluster (`portrait_rt.serving.ray_app`): 2 CPU replicas of a tiny pipeline
folder, capacity 2 each, driven over the Space's live WebSocket protocol by real socket clients in threads.

One cluster for the module (start-up is the slow part, 35-65 s here); the test that kills a replica runs last. Its
survivors must stay in real time while the replacement replica starts on the same cores: measured, they did at load
average 8-10 on this 2-core machine, and at 28-31 the live rule (3 s behind the microphone) ended one of them. The
`ray` marker selects these (`pytest -m ray`); they run in CI's default command too.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
ws_client = pytest.importorskip("websockets.sync.client")

from portrait_rt.serving.protocol import pack_block, unpack_block  # noqa: E402
from portrait_rt.serving.ray_app import MAX_BACKLOG_S  # noqa: E402
from tests.conftest import speech_like  # noqa: E402

# one torch thread here, as in the replicas (`threads=1`): CPU matmuls may round differently with another count
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_thread")]
ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
CHUNK_S = 0.04  # the browser's chunk
APP = "prt"
# The survivors of a crash must keep getting frames: no gap between two of their blocks as long as MAX_BACKLOG_S (the
# live rule: a session that far behind is ended), and back within 1 s of their audio by the end. Their worst lateness
# comes while the replacement replica starts on the same 2 cores (importing torch, loading the model); it is printed
# in the timeline and in docs/serving.md.
MAX_GAP_S = MAX_BACKLOG_S


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """Every live process: pid -> (parent pid, command line), from `ps`; zombies (exited, holding nothing but their
    pid until a parent reaps them) are left out."""
    cmd = ["ps", "-ww", "-eo", "pid=,ppid=,stat=,args="]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines()]
    return {int(r[0]): (int(r[1]), r[3] if len(r) > 3 else "") for r in rows if not r[2].startswith("Z")}


def _descendants(root: int) -> dict[int, str]:
    """The processes under `root` (this test's Ray cluster runs under the test's own process), but `ps` itself."""
    table, out, todo = _processes(), {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, args) in table.items():
            if ppid == parent and not args.startswith("ps -eo"):
                out[pid] = args
                todo.append(pid)
    return out


def _still_running(started: dict[int, str]) -> list[str]:
    """Which of `started` (pid -> command line) still run, wherever they were moved (an orphan's parent is 1)."""
    table = _processes()
    return [f"{pid} {args}" for pid, args in started.items() if pid in table and table[pid][1] == args]


@pytest.fixture(scope="module")
def cluster(tiny_pipe, tmp_path_factory):
    """A local Ray cluster (2 CPUs, no dashboard) serving the tiny pipeline, saved as a folder, on 2 replicas."""
    from portrait_rt.serving.ray_app import build_app

    folder = tmp_path_factory.mktemp("pipe") / "tiny"
    tiny_pipe.save_pretrained(folder)
    temp_dir = tempfile.mkdtemp(prefix="prt-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    patch = pytest.MonkeyPatch()
    # Serve kills an HTTP proxy that is not ready within 5 s; on a loaded 2-core machine starting one takes longer
    patch.setenv("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "120")
    patch.setenv("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "60")
    before = _descendants(os.getpid())  # what earlier tests left under this process (decoder workers, zombies)
    start = time.monotonic()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}},
        log_to_driver=False,
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(str(folder), capacity=2, replicas=2, threads=1, health_check_period_s=1.0)
    serve.run(app, name=APP, route_prefix="/")
    startup_s = time.monotonic() - start
    yield {"url": f"ws://127.0.0.1:{port}/live-rt/ws", "folder": folder, "startup_s": startup_s}
    started = {  # gcs_server, raylet, the Serve controller, proxy, replicas, workers...: what Ray started
        pid: args for pid, args in _descendants(os.getpid()).items() if before.get(pid) != args
    }
    assert any("gcs_server" in args for args in started.values()), started
    serve.shutdown()
    ray.shutdown()
    patch.undo()
    deadline = time.monotonic() + 30
    while _still_running(started) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _still_running(started)
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"Ray processes left after shutdown: {left}"
    print(json.dumps({"ray_processes_at_shutdown": len(started), "left": len(left)}))


def _reference() -> str:
    img = np.full((96, 80, 3), 60, np.uint8)
    img[20:70, 20:60] = (200, 120, 40)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _start(seed: int) -> dict:
    return {
        "type": "start",
        "references": [_reference()],
        "guidance_audio": 2.0,
        "guidance_reference": 2.0,
        "num_inference_steps": 2,
        "seed": seed,
        "block_size": 1,
        "sample_rate": RATE,
    }


class Conversation(threading.Thread):
    """One client: start, then `seconds` of speech-like audio in real time (40 ms chunks), stop, every message
    received kept with its arrival time."""

    def __init__(self, url: str, seed: int, seconds: float):
        super().__init__(daemon=True)
        self.url, self.seed, self.seconds = url, seed, seconds
        self.audio = (speech_like(seconds, RATE, seed) * 32767).astype("<i2")
        self.events: list[tuple[float, dict]] = []  # (arrival, JSON message)
        self.blocks: list[tuple[float, dict, list[bytes]]] = []  # (arrival, header, JPEGs)
        self.ready = threading.Event()
        self.talk_start: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with ws_client.connect(self.url, max_size=None, open_timeout=60) as ws:
                ws.send(json.dumps(_start(self.seed)))
                while True:
                    message = json.loads(ws.recv(timeout=120))
                    self.events.append((time.monotonic(), message))
                    if message["type"] != "queued":
                        break
                if message["type"] != "ready":
                    return
                self.ready.set()
                sender = threading.Thread(target=self._talk, args=(ws,), daemon=True)
                sender.start()
                while True:
                    try:
                        message = ws.recv(timeout=60)
                    except Exception:  # noqa: BLE001 - the socket closed: the messages say how it ended
                        return
                    now = time.monotonic()
                    if isinstance(message, bytes):
                        header, _, jpegs = unpack_block(message)
                        self.blocks.append((now, header, jpegs))
                    else:
                        self.events.append((now, json.loads(message)))
                        if self.events[-1][1]["type"] in ("ended", "error"):
                            return
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err
        finally:
            self.ready.set()

    def _talk(self, ws) -> None:
        step = int(CHUNK_S * RATE)
        self.talk_start = time.monotonic()
        try:
            for i, k in enumerate(range(0, self.audio.size, step)):
                ws.send(self.audio[k : k + step].tobytes())
                time.sleep(max(0.0, self.talk_start + (i + 1) * CHUNK_S - time.monotonic()))
            ws.send(json.dumps({"type": "stop"}))
        except Exception:  # noqa: BLE001 - the server ended the conversation first
            pass

    @property
    def replica(self) -> str | None:
        return next((m.get("replica") for _, m in self.events if m["type"] == "ready"), None)

    @property
    def last(self) -> dict:
        return self.events[-1][1]

    def lateness(self, after: float = 0.0) -> list[float]:
        """Per block arriving after `after`: seconds from the moment its audio had all been sent to its arrival."""
        out = []
        for arrival, header, jpegs in self.blocks:
            audio_end = self.talk_start + min((header["first_frame"] + len(jpegs)) / 25, self.seconds)
            if arrival >= after:
                out.append(arrival - audio_end)
        return out


def _converse(url: str, seeds: list[int], seconds: float) -> list[Conversation]:
    conversations = [Conversation(url, seed, seconds) for seed in seeds]
    for c in conversations:
        c.start()
    return conversations


def _join(conversations, timeout_s: float = 120) -> None:
    for c in conversations:
        c.join(timeout_s)
        assert not c.is_alive(), "a conversation did not end"
        assert c.error is None, repr(c.error)


def _compare_with_stream(cluster, conversations, seconds: float) -> list[dict]:
    """Each conversation's frames against the library's own `stream()` of the same audio and seed (after the
    silence lead-in the worker put before it), JPEG-encoded alike: which frames differ, and by how much."""
    from portrait_rt.pipeline import PortraitRTPipeline

    pipe = PortraitRTPipeline.from_pretrained(cluster["folder"])  # as the replicas load it (on 1 thread, as they run)
    reference = cluster["folder"].parent / "reference.png"
    reference.write_bytes(base64.b64decode(_reference().split(",", 1)[1]))  # loaded as the replica loads it
    settings = {"guidance_audio": 2.0, "guidance_reference": 2.0, "num_inference_steps": 2, "block_size": 1}
    out = []
    for c in conversations:
        step = int(CHUNK_S * RATE)
        lead = c.last["lead_frames"]  # silence the worker put before this session's audio (aligning its blocks)
        audio = np.concatenate([np.zeros(lead * 640, np.int16), c.audio])
        chunks = [(audio[k : k + step], RATE) for k in range(0, audio.size, step)]
        generator = torch.Generator().manual_seed(c.seed)
        frames = np.concatenate(list(pipe.stream([reference], chunks, generator=generator, **settings)))[lead:]
        expected = unpack_block(pack_block(_Record(frames)))[2]
        got = [jpeg for _, _, jpegs in c.blocks for jpeg in jpegs]
        assert len(got) == len(expected) == round(seconds * 25)
        differ = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
        worst = max([_pixel_diff(got[i], expected[i]) for i in differ], default=0)
        out.append({"session": c.seed, "lead_frames": lead, "frames": len(got), "differ": differ, "worst": worst})
        print(json.dumps(out[-1]))
    return out


def test_startup_and_a_session_through_serve_equals_the_librarys_stream_byte_for_byte(cluster):
    seconds = 1.5
    conversations = []
    for seed in (0, 1):  # one after the other: each runs alone on its replica's worker
        (c,) = _converse(cluster["url"], [seed], seconds)
        _join([c])
        assert c.last["type"] == "ended" and c.last["reason"] == "stopped", c.last
        conversations.append(c)
    for figures in _compare_with_stream(cluster, conversations, seconds):
        assert figures["differ"] == [], figures
    print(json.dumps({"startup_s": round(cluster["startup_s"], 1)}))


def test_four_sessions_land_two_per_replica_and_run_batched(cluster):
    seconds = 1.5
    conversations = _converse(cluster["url"], [2, 3, 4, 5], seconds)
    _join(conversations)
    assert all(c.last["type"] == "ended" and c.last["reason"] == "stopped" for c in conversations), [
        c.last for c in conversations
    ]
    # capacity 2 per replica: the 4 land 2 + 2 (no replica can hold a third)
    assert sorted(Counter(c.replica for c in conversations).values()) == [2, 2]
    # Batched two to a worker, the frames are not always bit-identical with the stream alone: measured, 0 to 21 of
    # 38 frames of a session differ, by up to 13 levels after JPEG, once a session joins the other's group mid-way
    # (the later blocks follow the first difference). Printed here, not asserted: the worker's bit-exactness
    # (tests/test_stream_groups.py, tests/test_worker.py) is where it is owed.
    _compare_with_stream(cluster, conversations, seconds)


def _pixel_diff(a: bytes, b: bytes) -> int:
    """The largest difference (0-255) between two JPEG frames' pixels."""
    x, y = (np.asarray(Image.open(io.BytesIO(j)), np.int16) for j in (a, b))
    return int(np.abs(x - y).max())


class _Record:
    """A block's frames in the shape `pack_block` reads (the audio and timing do not matter to the JPEGs)."""

    def __init__(self, frames):
        from portrait_rt.streaming import BlockTiming

        self.frames, self.first_frame = frames, 0
        self.audio = np.zeros(len(frames) * 640, np.float32)
        self.timing = BlockTiming(0, len(frames))


def _replica_pid(replica_id: str) -> int:
    actor = ray.get_actor(f"SERVE_REPLICA::{APP}#PortraitReplica#{replica_id}", namespace="serve")
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)


def _running_replicas() -> int:
    status = serve.status().applications[APP].deployments["PortraitReplica"]
    return status.replica_states.get("RUNNING", 0)


def test_a_replica_that_dies_ends_exactly_its_sessions_the_others_stay_on_time_and_serve_replaces_it(cluster):
    seconds = 6.0
    conversations = _converse(cluster["url"], [10, 11, 12, 13], seconds)
    for c in conversations:
        assert c.ready.wait(60) and c.replica, c.events
    by_replica: dict[str, list[Conversation]] = {}
    for c in conversations:
        by_replica.setdefault(c.replica, []).append(c)
    assert sorted(map(len, by_replica.values())) == [2, 2]
    doomed_id, survivor_id = sorted(by_replica)
    pid = _replica_pid(doomed_id)
    deadline = time.monotonic() + 60
    while not all(len(c.blocks) >= 3 for c in conversations) and time.monotonic() < deadline:
        time.sleep(0.1)  # mid-conversation: blocks are flowing
    assert all(len(c.blocks) >= 3 for c in conversations)

    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # a crash: no graceful anything
    timeline = {"kill": 0.0}
    while _running_replicas() == 2 and time.monotonic() - t_kill < 30:
        time.sleep(0.1)
    timeline["serve_sees_it"] = time.monotonic() - t_kill

    late = _converse(cluster["url"], [14], 2.0)  # a new conversation after the crash
    _join(conversations + late)
    while _running_replicas() < 2 and time.monotonic() - t_kill < 90:
        time.sleep(0.2)
    timeline["serve_replaced_it"] = time.monotonic() - t_kill

    for c in by_replica[doomed_id]:  # ended with the message, no block after the crash
        end = c.last
        assert end["type"] == "error" and end["reconnect"] is True and "Press Talk" in end["message"], end
        assert end["replica"] == doomed_id
        timeline.setdefault("clients_told", []).append(round(c.events[-1][0] - t_kill, 3))
        assert c.events[-1][0] - t_kill < 10
    for c in by_replica[survivor_id]:  # untouched: every frame, on time through the crash and the restart
        assert c.last["type"] == "ended" and c.last["reason"] == "stopped", c.last
        assert sum(len(j) for _, _, j in c.blocks) == round(seconds * 25)
        lateness = c.lateness(after=t_kill)
        arrivals = [t_kill] + [t for t, _, _ in c.blocks if t >= t_kill]
        gaps = np.diff(arrivals)
        assert lateness and gaps.max() < MAX_GAP_S, gaps  # frames kept coming through the crash and the restart
        assert lateness[-1] < 1.0, lateness  # and back to real time by the end
        timeline.setdefault("survivors_max_gap_after_kill_s", []).append(round(float(gaps.max()), 3))
        timeline.setdefault("survivors_max_lateness_after_kill_s", []).append(round(max(lateness), 3))
    (new,) = late
    assert new.last["type"] == "ended" and new.replica not in (None, doomed_id), new.events
    timeline["new_session_ready"] = round(next(t for t, m in new.events if m["type"] == "ready") - t_kill, 3)
    timeline["new_session_replica"] = "survivor" if new.replica == survivor_id else "replacement"
    assert timeline["serve_replaced_it"] < 90
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in timeline.items()}))
