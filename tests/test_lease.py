"""ZeroGPU: a conversation's model work runs inside its GPU lease, and nowhere else (a recording stand-in for
`spaces.GPU`, since no ZeroGPU hardware is here); elsewhere the same conversation code runs without a lease."""

import functools
import sys
import threading
import types

import numpy as np
import torch

from portrait_rt.constants import SAMPLE_RATE
from portrait_rt.serving import lease

from .conftest import speech_like

KW = {"num_inference_steps": 1, "block_size": 4, "kv_window": 12}


class RecordingGPU:
    """Stands in for `spaces.GPU`: counts the leases held now, and each model call says whether one was held."""

    def __init__(self):
        self.active, self.leases, self.calls = 0, [], []
        self._lock = threading.Lock()

    def __call__(self, fn=None, duration=None):
        def wrap(task):
            @functools.wraps(task)
            def leased(*args, **kwargs):
                with self._lock:
                    self.active += 1
                    self.leases.append(duration)
                try:
                    return task(*args, **kwargs)
                finally:
                    with self._lock:
                        self.active -= 1

            return leased

        return wrap if fn is None else wrap(fn)

    def watch(self, module, name: str, monkeypatch) -> None:
        method = getattr(module, name)

        def recorded(*args, **kwargs):
            self.calls.append((name, self.active > 0))
            return method(*args, **kwargs)

        monkeypatch.setattr(module, name, recorded)


def test_zero_gpu_is_detected_as_the_spaces_package_does(monkeypatch):
    from spaces.config import Settings

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert Settings().zero_gpu  # what `spaces` reads; lease.zero_gpu() returns its Config.zero_gpu
    monkeypatch.setattr("spaces.config.Config", Settings())
    assert lease.zero_gpu()
    monkeypatch.setenv("SPACES_ZERO_GPU", "")
    monkeypatch.setattr("spaces.config.Config", Settings())
    assert not lease.zero_gpu()
    assert lease.gpu_lease(len) is len  # not on ZeroGPU: the function itself, no lease


def test_on_zero_gpu_every_model_call_of_a_conversation_runs_inside_its_lease(tiny_pipe, portraits, monkeypatch):
    gpu = RecordingGPU()
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    monkeypatch.setattr(lease, "zero_gpu", lambda: True)
    monkeypatch.setattr(lease, "_process_workers", {})
    for module, name in (
        (tiny_pipe.transformer, "forward_cached"),
        (tiny_pipe.transformer, "update_cache"),
        (tiny_pipe.transformer, "prefill_references"),
        (tiny_pipe.vae, "encode_reference"),
        (tiny_pipe.vae, "decode_chunk"),
        (tiny_pipe.audio_encoder, "encode_chunk"),
    ):
        gpu.watch(module, name, monkeypatch)

    def open_session():  # what the app's lease does: this process's worker, a session for the visitor's settings
        worker = lease.process_worker(tiny_pipe)
        return worker.open(portraits[:1], generator=torch.Generator().manual_seed(0), **KW)

    channel = lease.Channel()
    x = speech_like(1.5)
    for i in range(0, x.size, 1600):
        channel.send_audio(x[i : i + 1600], SAMPLE_RATE)
    channel.end_audio()
    try:
        reason = lease.gpu_lease(lease.converse)(open_session, channel)  # the Gradio event's call
    finally:
        for worker in lease._process_workers.values():
            worker.shutdown()
    records = []
    while (item := channel.records.get(timeout=10)) is not None and not isinstance(item, tuple):
        records.append(item)
    assert reason == "stopped" and item == (None, "stopped")
    assert sum(len(r.frames) for r in records) == int(np.ceil(x.size / 640))
    assert gpu.leases == [lease.LEASE_SECONDS]  # one lease for the conversation
    assert {name for name, _ in gpu.calls} >= {"forward_cached", "decode_chunk", "encode_reference"}
    outside = [name for name, inside in gpu.calls if not inside]
    assert not outside, f"model calls outside the lease: {outside}"
    tiny_pipe.start_stream(portraits[:1], **KW)  # the watch sees a model call outside a lease for what it is
    assert gpu.calls[-1] == ("prefill_references", False)
