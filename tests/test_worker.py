"""The batched session worker (portrait_rt.serving.worker): sessions share steps and each gets its frames alone."""

import contextlib
import threading

import numpy as np
import pytest
import torch

from portrait_rt.constants import SAMPLE_RATE, SAMPLES_PER_FRAME
from portrait_rt.serving.worker import StreamWorker, WorkerFull

from .conftest import speech_like

KW = {"num_inference_steps": 1, "block_size": 4, "kv_window": 12}


@contextlib.contextmanager
def _held(gate: threading.Event):
    """A lease that starts only when the test says so: what the sessions sent by then is there at the first step."""
    gate.wait(30)
    yield


def _records(session, timeout=120):
    out = []
    while (record := session.get(timeout=timeout)) is not None:
        out.append(record)
    return out


def test_sessions_share_steps_and_get_their_frames_alone(tiny_pipe, portraits):
    """Three sessions opened together run batched (steps of 3 streams), and each one's frames equal its stream run
    alone with the same seed, bit for bit; records number their frames from 0 and carry their audio."""
    clips = [speech_like(s, seed=i) for i, s in enumerate((1.6, 1.3, 1.5))]
    gate = threading.Event()
    worker = StreamWorker(tiny_pipe, capacity=3, lease=lambda: _held(gate))
    try:
        sessions = [
            worker.open(portraits[i : i + 1], generator=torch.Generator().manual_seed(i), **KW) for i in range(3)
        ]
        for session, x in zip(sessions, clips):
            for i in range(0, x.size, 3200):
                session.push(x[i : i + 3200], SAMPLE_RATE)
            session.close()
        gate.set()
        got = [_records(s) for s in sessions]
    finally:
        worker.shutdown()
    assert max(worker.step_sizes) == 3
    for i, (x, records) in enumerate(zip(clips, got)):
        alone = tiny_pipe.stream(
            portraits[i : i + 1], [(x, SAMPLE_RATE)], generator=torch.Generator().manual_seed(i), **KW
        )
        assert np.array_equal(np.concatenate([r.frames for r in records]), np.concatenate(list(alone)))
        assert [r.first_frame for r in records] == list(np.cumsum([0] + [len(r.frames) for r in records[:-1]]))
        assert all(r.audio.size == len(r.frames) * SAMPLES_PER_FRAME for r in records)
        assert sessions[i].end_reason == "stopped"


def test_capacity_is_the_admission_limit_and_a_cancel_frees_the_slot(tiny_pipe, portraits):
    worker = StreamWorker(tiny_pipe, capacity=1)
    try:
        first = worker.open(portraits[:1], **KW)
        with pytest.raises(WorkerFull, match="1 live slot"):
            worker.open(portraits[:1], **KW)
        first.cancel()
        assert first.get(timeout=30) is None and first.end_reason == "cancelled"
        worker.open(portraits[:1], **KW).cancel()  # the slot is free again
    finally:
        worker.shutdown()


def test_a_cancelled_sessions_slot_is_free_at_once_before_the_worker_steps(tiny_pipe, portraits):
    """The Space's gate frees its slot as a socket closes and may admit the next user at once: the worker must take
    them though its thread has not yet stepped to free the old stream (it raised WorkerFull in that gap)."""
    gate = threading.Event()  # the worker's thread waits here: nothing is stepped or cleaned up meanwhile
    worker = StreamWorker(tiny_pipe, capacity=1, lease=lambda: _held(gate))
    try:
        worker.open(portraits[:1], **KW).cancel()
        second = worker.open(portraits[:1], **KW)  # no WorkerFull
        assert worker.active == 1
        with pytest.raises(WorkerFull):
            worker.open(portraits[:1], **KW)
        second.cancel()
    finally:
        gate.set()
        worker.shutdown()


def test_a_session_that_falls_behind_ends_saying_so(tiny_pipe, portraits):
    gate = threading.Event()
    worker = StreamWorker(tiny_pipe, max_backlog_s=0.5, lease=lambda: _held(gate))
    try:
        session = worker.open(portraits[:1], **KW)
        session.push(speech_like(0.4), SAMPLE_RATE)
        assert not session.ended
        session.push(speech_like(0.4), SAMPLE_RATE)  # 0.8 s the model has not seen: over the 0.5 s allowed
        assert session.ended and "behind the microphone" in session.end_reason
        gate.set()
        assert session.get(timeout=30) is None
    finally:
        worker.shutdown()


def test_bad_settings_are_refused_at_open(tiny_pipe, portraits):
    worker = StreamWorker(tiny_pipe)
    try:
        with pytest.raises(ValueError, match="num_inference_steps"):
            worker.open(portraits[:1], num_inference_steps=0)
        assert worker.active == 0
    finally:
        worker.shutdown()


def test_a_lead_in_is_silence_at_the_sessions_own_rate(tiny_pipe, portraits, monkeypatch):
    """A session that joins a running group gets a lead-in of silence (its frames not sent): its frames are then
    `stream()`'s on that silence and its audio as one signal at the client's rate (48 kHz here), bit for bit: the
    silence goes in at the audio's own rate, so nothing resamples twice."""
    lead, rate = 3, 48000
    monkeypatch.setattr(StreamWorker, "_lead_frames", lambda self, session, start: lead)
    x = (speech_like(1.4, rate) * 32767).astype(np.int16)
    gate = threading.Event()
    worker = StreamWorker(tiny_pipe, lease=lambda: _held(gate))
    try:
        session = worker.open(portraits[:1], generator=torch.Generator().manual_seed(3), **KW)
        for i in range(0, x.size, 1920):
            session.push(x[i : i + 1920], rate)
        session.close()
        gate.set()
        got = np.concatenate([r.frames for r in _records(session)])
    finally:
        worker.shutdown()
    chunks = [(np.concatenate([np.zeros(lead * 1920, np.int16), x]), rate)]
    alone = np.concatenate(
        list(tiny_pipe.stream(portraits[:1], chunks, generator=torch.Generator().manual_seed(3), **KW))
    )
    assert session.lead_frames == lead and np.array_equal(got, alone[lead:])
