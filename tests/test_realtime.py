"""The low-latency live path's server (`space.realtime`) without a browser: Starlette's test client on the WebSocket,
the tiny pipeline behind it. The browser side is in tests/test_live_browser.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient

from portrait_rt.serving.protocol import pack_block, parse_start, unpack_block
from space.gate import LiveGate, LiveRefused
from space.realtime import LiveServer
from tests.conftest import speech_like

pytestmark = pytest.mark.usefixtures("one_thread")
RATE = 16000


def _data_url(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _start(portraits, **overrides) -> dict:
    message = {
        "type": "start",
        "references": [_data_url(portraits[0])],
        "guidance_audio": 2.0,
        "guidance_reference": 2.0,
        "num_inference_steps": 1,
        "seed": 0,
        "block_size": 1,
        "sample_rate": RATE,
    }
    return {**message, **overrides}


@pytest.fixture
def server(tiny_pipe):
    live = LiveServer(tiny_pipe, capacity=1, max_waiting=1, time_limit_s=3.0, per_client=10)
    with TestClient(Starlette(routes=live.routes())) as client:
        yield live, client


def _pcm(seconds: float, seed: int = 0) -> bytes:
    return (speech_like(seconds, RATE, seed) * 32767).astype("<i2").tobytes()


def _talk(ws, pcm: bytes, chunk_s: float = 0.04) -> None:
    """Send `pcm` as a microphone does: in real time (the server refuses audio that comes faster)."""
    step, start = int(chunk_s * RATE) * 2, time.monotonic()
    for k, i in enumerate(range(0, len(pcm), step)):
        time.sleep(max(0.0, start + k * chunk_s - time.monotonic()))
        ws.send_bytes(pcm[i : i + step])


def _receive_until_end(ws) -> tuple[list[dict], list[np.ndarray], dict]:
    headers, audio = [], []
    while True:
        message = ws.receive()
        if message.get("bytes") is not None:
            header, pcm, jpegs = unpack_block(message["bytes"])
            assert len(jpegs) == len(header["jpeg_bytes"]) and all(j[:2] == b"\xff\xd8" for j in jpegs)  # JPEGs
            headers.append(header)
            audio.append(pcm)
        else:
            end = json.loads(message["text"])
            assert end["type"] == "ended", end
            return headers, audio, end


def test_a_session_streams_blocks_that_carry_their_audio_and_ends_on_stop(server, portraits):
    live, client = server
    pcm = _pcm(1.0)
    with client.websocket_connect("/live-rt/ws") as ws:
        ws.send_json(_start(portraits))
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["block_frames"] == 4  # block size 1: 4 video frames, 160 ms
        assert live.gate.state()["active"] == 1
        _talk(ws, pcm)
        ws.send_json({"type": "stop"})
        headers, audio, end = _receive_until_end(ws)
    assert end["reason"] == "stopped" and end["audio_s"] == 1.0
    frames = [h["first_frame"] for h in headers]
    assert frames == sorted(frames) and frames[0] == 0  # in order, from the start
    total = sum(len(h["jpeg_bytes"]) for h in headers)
    assert total == 25  # every frame of the 1 s said, the tail block flushed and trimmed
    sent = np.frombuffer(pcm, "<i2").astype(np.float32) / 32767
    back = np.concatenate(audio).astype(np.float32) / 32767
    assert back.size == sent.size and np.abs(back - sent).max() < 2e-3  # the audio that drove the frames: the mic's
    assert live.gate.state() == {"capacity": 1, "active": 0, "waiting": 0}  # the slot is free again


def test_the_second_session_waits_in_line_is_told_and_then_runs(server, portraits):
    live, client = server
    with client.websocket_connect("/live-rt/ws") as first:
        first.send_json(_start(portraits))
        assert first.receive_json()["type"] == "ready"
        with client.websocket_connect("/live-rt/ws") as second:
            second.send_json(_start(portraits, seed=1))
            assert second.receive_json() == {"type": "queued", "position": 1}
            with client.websocket_connect("/live-rt/ws") as third:  # the line (1 place) is full: refused, told why
                third.send_json(_start(portraits))
                refused = third.receive_json()
                assert refused["type"] == "refused" and "busy" in refused["message"]
            first.send_json({"type": "stop"})
            _receive_until_end(first)
            assert second.receive_json()["type"] == "ready"  # its turn: only now is its microphone opened
            _talk(second, _pcm(0.5, seed=2))
            second.send_json({"type": "stop"})
            headers, _, end = _receive_until_end(second)
    assert end["audio_s"] == 0.5 and sum(len(h["jpeg_bytes"]) for h in headers) == 13  # its own audio only
    assert live.sessions_started == 2


def test_a_disconnect_mid_stream_frees_the_slot_for_the_next_session(server, portraits):
    live, client = server
    with client.websocket_connect("/live-rt/ws") as ws:
        ws.send_json(_start(portraits))
        assert ws.receive_json()["type"] == "ready"
        _talk(ws, _pcm(0.5))
        ws.receive_bytes()  # a block came back; then the tab closes
    for _ in range(100):
        if live.gate.state()["active"] == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert live.gate.state()["active"] == 0
    with client.websocket_connect("/live-rt/ws") as ws:
        ws.send_json(_start(portraits))
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "stop"})
        headers, _, end = _receive_until_end(ws)
    assert headers == [] and end["audio_s"] == 0.0  # nothing of the closed session's audio came through


def test_the_time_limit_ends_a_session_with_its_reason(server, portraits):
    live, client = server
    with client.websocket_connect("/live-rt/ws") as ws:
        ws.send_json(_start(portraits))
        assert ws.receive_json()["type"] == "ready"
        _talk(ws, _pcm(3.5), chunk_s=0.5)
        headers, _, end = _receive_until_end(ws)
    assert "time limit" in end["reason"] and end["audio_s"] == 3.0
    assert sum(len(h["jpeg_bytes"]) for h in headers) == 75


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"references": []}, "Reference 1"),
        ({"references": ["data:image/png;base64,bm90IGFuIGltYWdl"]}, "not an image"),
        ({"references": ["http://example.com/a.png"]}, "Reference 1"),
        ({"block_size": 3}, "Block size"),
        ({"seed": -1}, "Seed"),
        ({"num_inference_steps": 1.5}, "Denoising steps"),
        ({"guidance_audio": "high"}, "Audio guidance"),
        ({"guidance_reference": 99}, "Reference guidance"),
        ({"sample_rate": 100}, "sample_rate"),
        ({"type": "hello"}, "start"),
    ],
)
def test_bad_start_messages_get_an_error_naming_the_field(server, portraits, change, words):
    live, client = server
    with client.websocket_connect("/live-rt/ws") as ws:
        ws.send_json(_start(portraits, **change))
        error = ws.receive_json()
    assert error["type"] == "error" and words in error["message"], error
    assert live.gate.state()["active"] == 0 and live.sessions_started == 0


def test_audio_before_ready_is_an_error_not_kept_for_later(server, portraits):
    live, client = server
    with client.websocket_connect("/live-rt/ws") as first:
        first.send_json(_start(portraits))
        assert first.receive_json()["type"] == "ready"
        with client.websocket_connect("/live-rt/ws") as second:
            second.send_json(_start(portraits))
            assert second.receive_json()["type"] == "queued"
            second.send_bytes(_pcm(0.2))  # talking while told to wait: refused, never queued for a later stream
            error = second.receive_json()
            assert error["type"] == "error" and "ready" in error["message"]
        first.send_json({"type": "stop"})
        _receive_until_end(first)
    assert live.gate.state() == {"capacity": 1, "active": 0, "waiting": 0}


def test_gate_is_first_come_first_served():
    async def run():
        gate = LiveGate(capacity=1, max_waiting=2)
        told: dict[str, list[int]] = {"b": [], "c": []}
        await gate.enter(lambda n: None)
        b = asyncio.create_task(gate.enter(lambda n: told["b"].append(n) or asyncio.sleep(0)))
        await asyncio.sleep(0)
        c = asyncio.create_task(gate.enter(lambda n: told["c"].append(n) or asyncio.sleep(0)))
        await asyncio.sleep(0.01)
        with pytest.raises(LiveRefused):
            await gate.enter(lambda n: None)
        assert gate.state() == {"capacity": 1, "active": 1, "waiting": 2}
        gate.leave()
        await b
        await asyncio.sleep(0.01)
        assert not c.done() and told == {"b": [1], "c": [2, 1]}  # c moved up when b got in
        gate.leave()
        await c
        assert gate.state() == {"capacity": 1, "active": 1, "waiting": 0}

    asyncio.run(run())


def test_pack_block_round_trip():
    from portrait_rt.streaming import BlockRecord, BlockTiming

    frames = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    audio = np.linspace(-1, 1, 4 * 640, dtype=np.float32)
    header, pcm, jpegs = unpack_block(pack_block(BlockRecord(frames, audio, 12, BlockTiming(3, 4, latency_ms=9.5))))
    assert header["first_frame"] == 12 and header["server_ms"] == 9.5 and len(jpegs) == 4
    assert np.abs(pcm / 32767 - audio).max() < 1e-4


def test_a_limit_from_the_environment_names_its_variable(monkeypatch):
    from space.limits import realtime_streams

    monkeypatch.setenv("PORTRAIT_RT_REALTIME_STREAMS", "two")
    with pytest.raises(ValueError, match="PORTRAIT_RT_REALTIME_STREAMS='two': set it to a whole number"):
        realtime_streams(3)
    monkeypatch.setenv("PORTRAIT_RT_REALTIME_STREAMS", "5")
    assert realtime_streams(3) == 5
    monkeypatch.delenv("PORTRAIT_RT_REALTIME_STREAMS")
    assert realtime_streams(3) == 3


def test_parse_start_checks_the_settings_and_names_the_reference_slots(tiny_pipe, portraits):
    message = _start(portraits, seed=5, references=[None, _data_url(portraits[0])])
    request = parse_start(json.dumps(message), tiny_pipe)
    assert [name for name, _ in request.references] == ["Reference 2"]  # the page's slot, not its index in a list
    assert request.sample_rate == RATE and request.settings["settings"].block_size == 1
    assert torch.equal(request.settings["generator"].get_state(), torch.Generator().manual_seed(5).get_state())


def test_the_decoder_gives_the_references_as_sent():
    from portrait_rt.serving.references import decode

    image = np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)
    (decoded,) = decode([("Reference 1", _data_url(image))], max_pixels=10**6, side=1024)
    assert np.array_equal(np.asarray(decoded), image)  # a PNG under the size cap: lossless, untouched


def test_a_failure_mid_stream_is_told_and_frees_the_slot(tiny_pipe, portraits, monkeypatch):
    def broken_feed_group(group, chunks, lockstep=True):  # the worker's batched step
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tiny_pipe, "feed_group", broken_feed_group)
    live = LiveServer(tiny_pipe, capacity=1, max_waiting=1)
    with TestClient(Starlette(routes=live.routes())) as client, client.websocket_connect("/live-rt/ws") as ws:
        ws.send_json(_start(portraits))
        assert ws.receive_json()["type"] == "ready"
        _talk(ws, _pcm(0.3))
        error = ws.receive_json()
    assert error["type"] == "error" and "out of memory" in error["message"]
    assert live.gate.state()["active"] == 0


def test_talk_defaults_to_block_size_2_on_a_cpu(tiny_pipe):
    from space.panels import block_size_choices
    from space.realtime import default_block_size

    assert tiny_pipe.device.type == "cpu"
    assert default_block_size(tiny_pipe) == (2 if 2 in block_size_choices(tiny_pipe) else 1)
