"""Fast tests of the Space's own code (`space/`): input checks, live segments, the live loop, readouts, panels."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from portrait_rt.audio import AudioStreamBuffer
from portrait_rt.constants import FPS, SAMPLES_PER_FRAME
from portrait_rt.loading import BUNDLED_MODEL, ModelChoice, choose_model
from portrait_rt.streaming import BlockTiming
from portrait_rt.video import read_video
from space.inputs import collect_references, load_speech, make_generator, user_errors
from space.live import LiveSession, LiveStream, run_live
from space.panels import about_markdown, block_size_choices, lipsync_plot, speed_readout

from .conftest import speech_like

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"


def _stream(pipe, portraits):
    """A stream of the tiny pipeline in blocks of 4 video frames (segments then close as soon as they may)."""
    generator = torch.Generator().manual_seed(0)
    return pipe.start_stream(portraits[:1], num_inference_steps=1, generator=generator, block_size=1)


class _Recorded:
    """The tiny pipeline, keeping a copy of every block record it hands out (what the segments must hold)."""

    def __init__(self, pipe):
        self.pipe, self.records = pipe, []

    def feed(self, stream, samples, rate):
        out = list(self.pipe.feed(stream, samples, rate))
        self.records += out
        return out

    def flush(self, stream):
        out = list(self.pipe.flush(stream))
        self.records += out
        return out


def _chunks(x, rate, seed=0):
    rng = np.random.default_rng(seed)
    i = 0
    while i < x.size:
        n = int(rng.integers(rate // 100, rate // 2))
        yield x[i : i + n], rate
        i += n


def _ffprobe(path):
    """{codec name: stream info} of a media file, frames counted."""
    cmd = ["ffprobe", "-v", "error", "-count_frames", "-print_format", "json", "-show_streams", str(path)]
    return {
        s["codec_name"]: s for s in json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)["streams"]
    }


# ---------------------------------------------------------------------------------------------- panels
def _stub_pipe(kv_window=8, block_size=2):
    linear = torch.nn.Linear(2, 3)
    transformer = SimpleNamespace(
        config=SimpleNamespace(kv_window=kv_window, block_size=block_size), dtype=torch.float32
    )
    transformer.parameters = linear.parameters
    return SimpleNamespace(vae=linear, audio_encoder=linear, transformer=transformer, resolution=64, device="cpu")


def test_block_size_choices_follow_the_kv_window():
    assert block_size_choices(_stub_pipe(kv_window=8)) == [1, 2, 4]
    assert block_size_choices(_stub_pipe(kv_window=6)) == [1, 2, 3]
    assert block_size_choices(_stub_pipe(kv_window=32)) == [1, 2, 4]


def test_about_panel_says_what_is_loaded_and_how_to_change_it(tmp_path):
    text = about_markdown(choose_model(None, tmp_path / "missing"), _stub_pipe())
    assert "preset:tiny" in text and "not there" in text and "--model" in text and "PORTRAIT_RT_MODEL" in text
    assert "random weights" in text and "Does well" not in text  # no claims for a model that is not loaded
    assert str(tmp_path) not in text  # no server paths
    trained = about_markdown(ModelChoice(str(BUNDLED_MODEL)), _stub_pipe())
    assert "⚠️" not in trained and "synthetic" in trained and "real photographs" in trained  # what it cannot do
    assert "blink" not in trained.split("Does well")[1].split("Does not")[0]  # no eyes blink in its output
    assert str(BUNDLED_MODEL.parent) not in trained and "`assets/portrait-rt-demo`" in trained
    other = about_markdown(ModelChoice(str(tmp_path)), _stub_pipe())
    assert str(tmp_path) not in other and tmp_path.name in other and "own card" in other


# ---------------------------------------------------------------------------------------------- input checks
def test_collect_references(tmp_path):
    import gradio as gr

    from portrait_rt.images import load_image

    a, b = EXAMPLES / "portrait_a.png", EXAMPLES / "portrait_b.png"
    refs = collect_references(a, None, b, resolution=128)  # the examples are at the model's size: taken as framed
    assert len(refs) == 2 and np.array_equal(refs[1].crop, load_image(b, 128))  # the project's loader, slot by slot
    with pytest.raises(ValueError, match="Reference 1"):
        collect_references(None, None, None, resolution=128)
    with pytest.raises(ValueError, match="1 to 3"):
        collect_references(a, a, a, a, resolution=128)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(gr.Error, match="Reference 3: notes.png is not an image"):
        collect_references(a, None, tmp_path / "notes.png", resolution=128)
    with pytest.warns(UserWarning, match="Reference 2: no face found"):  # gr.Warning, outside a Gradio event
        assert collect_references(a, np.full((90, 120, 3), 128, np.uint8), resolution=128)[1].framing == "centre"


def test_seed_and_audio_checks(tmp_path):
    import gradio as gr

    a, b = make_generator(7), make_generator(7.0)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    for bad in (None, -1, 1.5, 2**31):
        with pytest.raises(ValueError, match="Seed"):
            make_generator(bad)
    samples, rate = load_speech(str(EXAMPLES / "speech_a.wav"), max_seconds=60)
    assert rate > 0 and samples.size > rate
    with pytest.raises(gr.Error, match="Speech audio: upload a speech"):
        load_speech(None, max_seconds=60)
    with pytest.raises(gr.Error, match="Speech audio: The audio is .* long; the limit is 1 s"):
        load_speech(str(EXAMPLES / "speech_a.wav"), max_seconds=1)


def test_user_errors_become_gradio_errors():
    import gradio as gr

    with pytest.raises(gr.Error, match="use 1 to 3"):
        with user_errors():
            raise ValueError("Got 4 reference images; use 1 to 3.")
    with pytest.raises(KeyError):  # only the library's input errors are the user's to fix
        with user_errors():
            raise KeyError("bug")


def test_speed_readout():
    timings = [BlockTiming(0, 13, denoise_ms=100, latency_ms=120), BlockTiming(1, 16, denoise_ms=100, latency_ms=80)]
    text = speed_readout(timings, frames=25, lag_s=0.4)
    assert "25 frames (1.0 s) in 2 blocks" in text
    assert "125.0 FPS" in text and "last 80 ms" in text and "mean 100 ms" in text and "max 120 ms" in text
    assert "0.4 s behind" in text
    assert speed_readout([]) == "No block finished yet."


# ---------------------------------------------------------------------------------------------- live segments
def test_live_stream_segments_carry_their_audio_and_continue(tiny_pipe, portraits, tmp_path):
    pipe = _Recorded(tiny_pipe)
    x = speech_like(2.5, 48000)
    live = LiveStream(pipe, _stream(tiny_pipe, portraits), tmp_path)
    segments = []
    for samples, rate in _chunks((x * 32767).astype(np.int16), 48000):  # the microphone's int16 at 48 kHz
        segments += live.feed(samples, rate)
    assert len(segments) >= 2  # segments leave while audio still comes in
    segments += live.flush()
    total = -(-round(x.size / 3) // SAMPLES_PER_FRAME)  # 48 kHz -> 16 kHz, in frames (ceil)
    assert live.frames_written == total == 63

    starts, frames, audio = [], [], []
    for path in segments:
        info = _ffprobe(path)
        assert set(info) == {"h264", "aac"}
        starts.append(float(info["h264"]["start_time"]))
        f, a, _ = read_video(path, fps=FPS)  # fps: MPEG-TS timestamps otherwise decode at 50 fps (doubled frames)
        frames.append(f[: int(info["h264"]["nb_read_frames"])])
        lead = float(info["h264"]["start_time"]) - float(info["aac"]["start_time"])  # the AAC encoder's priming
        audio.append(a[round(lead * 16000) :][: len(frames[-1]) * SAMPLES_PER_FRAME])
    sizes = [len(f) for f in frames]
    assert all(n >= 25 for n in sizes[:-1]) and sum(sizes) == total  # >= 1 s each but the tail; nothing lost
    # Continuous timestamps: each segment starts where the previous ones end.
    expected = np.cumsum([0] + sizes[:-1]) / FPS
    assert np.allclose(np.array(starts) - starts[0], expected, atol=0.05)
    # The pipeline's frames, in order, through h.264: each far closer to its own twin than to the other frames.
    made = np.concatenate([r.frames for r in pipe.records]).astype(np.float32)
    streamed = np.concatenate(frames).astype(np.float32)
    err = np.abs(streamed[:, None] - made[None]).mean(axis=(2, 3, 4))
    assert (err.argmin(axis=1) == np.arange(total)).mean() > 0.9
    # Each segment's audio is the model-rate audio that drove its frames (AAC is lossy: compare envelopes).
    model_rate = AudioStreamBuffer()
    model_rate.push(x, 48000)
    model_rate.close()
    reference = model_rate.pop(model_rate.available)
    got = np.concatenate([np.pad(a, (0, n * SAMPLES_PER_FRAME - a.size)) for a, n in zip(audio, sizes)])

    def envelope(a):
        a = np.pad(a, (0, total * SAMPLES_PER_FRAME - a.size))[: total * SAMPLES_PER_FRAME]
        return np.sqrt(np.mean(a.reshape(total, -1) ** 2, axis=1))

    assert np.corrcoef(envelope(got), envelope(reference))[0, 1] > 0.95


def test_live_stream_on_the_real_pipeline_matches_offline(tiny_pipe, portraits, tmp_path):
    x = speech_like(1.3, 44100)
    stream = tiny_pipe.start_stream(portraits[:1], num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    live = LiveStream(tiny_pipe, stream, tmp_path)
    for samples, rate in _chunks(x, 44100, seed=1):
        live.feed(samples, rate)
    live.flush()
    offline = tiny_pipe(portraits[:1], (x, 44100), num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert live.frames_written == len(offline.frames) == 33
    counts = [int(_ffprobe(p)["h264"]["nb_read_frames"]) for p in live.segments]
    streamed = np.concatenate([read_video(p, fps=FPS)[0][:n] for p, n in zip(live.segments, counts)])
    assert streamed.shape == offline.frames.shape
    # The same frames through h.264: far closer to their own offline twins than to the other frames.
    err = np.abs(streamed[:, None].astype(np.float32) - offline.frames[None].astype(np.float32)).mean(axis=(2, 3, 4))
    assert (err.argmin(axis=1) == np.arange(len(err))).mean() > 0.9
    assert "33 frames" in live.readout()


# ---------------------------------------------------------------------------------------------- the live loop
def test_live_session_refuses_a_second_stream():
    s = LiveSession()
    assert s.begin()
    s.push((48000, np.ones(480, np.int16)))
    s.push(None)
    s.push((48000, np.zeros(0, np.int16)))
    assert len(s.chunks) == 1
    assert not s.begin()  # a second start while running: refused, and its audio is dropped
    s.push((48000, np.ones(480, np.int16)))
    assert len(s.chunks) == 1
    s.stop()  # ends the refused recording, not the running stream
    assert s.running and not s.stop_requested and not s.ignoring
    s.stop()
    assert s.stop_requested
    s.end()
    assert not s.running and not s.chunks and s.begin()
    s.fail()  # e.g. no reference image: the rest of this recording is dropped, the next one is clean
    s.push((48000, np.ones(480, np.int16)))
    assert not s.running and not s.chunks
    s.stop()
    assert not s.stop_requested and s.begin()


def test_a_refused_recording_leaves_nothing_for_the_next_one():
    """The settings check refuses a recording before its stream starts (`begin` never runs): its audio, queued all
    the same, is dropped when the next recording starts."""
    s = LiveSession()
    s.start_recording()
    s.push((48000, np.ones(48000, np.int16)))  # the refused recording's second of audio
    s.stop()
    s.start_recording()
    assert not s.chunks and not s.stop_requested
    s.push((48000, np.ones(480, np.int16)))
    assert s.begin() and len(s.chunks) == 1  # the new recording's own chunk only


def test_run_live_flushes_the_tail_after_stop(tiny_pipe, portraits, tmp_path):
    pipe, session = tiny_pipe, LiveSession()
    assert session.begin()
    x = (speech_like(1.7, 16000) * 32767).astype(np.int16)
    for samples, rate in _chunks(x, 16000):
        session.push((rate, samples))
    session.stop()  # stopped mid-block: 1.7 s is 42.5 frames
    live = LiveStream(pipe, _stream(pipe, portraits), tmp_path)
    out = list(run_live(live, session, poll_s=0.001, grace_s=0.01))
    assert live.frames_written == 43  # the tail block was flushed (padded, then trimmed to the audio)
    assert [p for p, _ in out] == live.segments and "43 frames" in out[-1][1]
    assert not session.running  # ready for the next recording


def test_run_live_ends_when_the_microphone_goes_quiet(tiny_pipe, portraits, tmp_path):
    pipe, session = tiny_pipe, LiveSession()
    session.begin()
    session.push((16000, np.ones(16000, np.int16)))
    live = LiveStream(pipe, _stream(pipe, portraits), tmp_path)
    start = time.monotonic()
    out = list(run_live(live, session, poll_s=0.001, idle_timeout_s=0.2))  # no stop event ever comes
    model_s = sum(t.total_ms for t in live.timings) / 1e3
    assert time.monotonic() - start - model_s < 5 and live.frames_written == 25 and len(out) == 1


# ---------------------------------------------------------------------------------------------- file mode
def test_lipsync_plot(tmp_path):
    from portrait_rt.data.synthetic import render_clip
    from portrait_rt.eval import mouth_darkening, mouth_opening

    clip = render_clip(0, resolution=64, duration=2.0)
    mouth = np.concatenate([mouth_opening(block) for block in np.array_split(clip.frames, 4)])  # block by block
    darkening = np.concatenate([mouth_darkening(block, clip.frames[0]) for block in np.array_split(clip.frames, 4)])
    path, summary = lipsync_plot(mouth, clip.audio, tmp_path, darkening)
    assert path.is_file() and path.suffix == ".png" and "Lip sync r = " in summary and "any face" in summary
    r, key_r = (float(part.split()[0].rstrip(";")) for part in summary.split("r = ")[1:])
    assert r > 0.8 and key_r > 0.8  # ground-truth renders are in sync, by either measure
    path, unframed = lipsync_plot(mouth, clip.audio, tmp_path)  # no face found: the darkening is not measured
    assert path.is_file() and "not measured on this face: no face was found" in unframed and "colour key" in unframed
    none, why = lipsync_plot(mouth[:10], clip.audio[: 10 * SAMPLES_PER_FRAME], tmp_path)
    assert none is None and "not measured" in why


# ---------------------------------------------------------------------------------------------- boundaries
def test_the_library_never_imports_gradio_or_the_space():
    code = (
        "import sys, portrait_rt.pipeline, portrait_rt.loading, portrait_rt.generate, portrait_rt.bench; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'space')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_browser_tests_collect_without_playwright():
    """`pytest -m "not browser"`, the README's subset, must not need the browser stack installed."""
    code = (
        "import sys; sys.modules['playwright'] = None; import pytest; "  # any `import playwright` now fails
        "sys.exit(pytest.main(['--collect-only', '-q', '-m', 'not browser', '-p', 'no:cacheprovider', "
        "'tests/test_app.py']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode in (0, 5), out.stdout + out.stderr  # 5: every test deselected; 2 would be an import error
    assert "error" not in out.stdout.lower(), out.stdout


def test_a_missing_chromium_fails_the_browser_tests_in_ci():
    """Without Chromium the browser tests are skipped on a workstation, but in CI (`CI` set; setup.sh --dev installs
    Chromium there) their collection fails, so CI cannot pass with them silently left out."""
    env = {**os.environ, "PORTRAIT_RT_CHROMIUM": "/nonexistent/chromium"}
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    cmd.append("tests/test_live_browser.py")
    local = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**env, "CI": ""})
    assert local.returncode == 5 and "no Chromium at /nonexistent/chromium" in local.stdout, local.stdout
    ci = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**env, "CI": "1"})
    assert ci.returncode not in (0, 5) and "CI is set, so the browser tests must run" in ci.stdout, ci.stdout


# ---------------------------------------------------------------------------------------------- example, compare
def test_the_cached_example_was_made_by_the_shipped_model():
    """`scripts/make_preview.py` must be rerun whenever the bundled model's weights or configs change."""
    from space.examples import EXAMPLE_MANIFEST, PREVIEW, cached_example

    example = cached_example(BUNDLED_MODEL)
    assert example is not None, (
        f"{EXAMPLE_MANIFEST.name} does not match the weights in assets/portrait-rt-demo: run "
        "`OMP_NUM_THREADS=1 python scripts/make_preview.py` and commit assets/preview/"
    )
    assert example.video.is_file() and example.plot.is_file() and "Lip sync r" in example.readout
    assert (PREVIEW / "preview.webp").is_file()
    for path in PREVIEW.iterdir():
        assert path.stat().st_size < 400_000, path  # binary assets stay small


def test_a_cached_example_is_not_used_for_another_model(tmp_path):
    import shutil

    from space.examples import cached_example, model_fingerprint

    other = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL / "scheduler", other / "scheduler")
    assert model_fingerprint(other) != model_fingerprint(BUNDLED_MODEL)
    assert cached_example(other) is None and cached_example("preset:tiny") is None


def test_render_example_writes_a_cache_that_cached_example_reads(tiny_pipe, tmp_path):
    """`render_example` (what scripts/make_preview.py runs): mp4, lip-sync plot and readout, and a manifest that
    `cached_example` accepts for that model folder only."""
    from space.examples import cached_example, render_example

    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    made = render_example(tiny_pipe, model, tmp_path / "cache")
    assert made.video.is_file() and made.plot is not None and made.plot.is_file()
    assert "Lip sync " in made.readout and "colour key" in made.readout  # the tiny model is 64 px: not framed
    assert cached_example(model, tmp_path / "cache" / "example.json") == made


def test_side_by_side_mp4_has_both_settings_and_one_audio_track(tmp_path, monkeypatch):
    """Both panels, labelled, over one audio track, written by the library's VideoWriter in blocks (3 here, the last
    partial); nothing is written into the working folder (moviepy left its TEMP_MPY_* audio there)."""
    from portrait_rt.video import ffmpeg_exe, read_video, write_video
    from space.compare import GAP_PX, LABEL_PX, side_by_side

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(6400)).astype(np.float32)
    flat = [np.full((10, 64, 64, 3), v, np.uint8) for v in (40, 200)]  # flat colours survive h.264 within a level
    videos = [write_video(tmp_path / f"{k}.mp4", f, audio, 16000) for k, f in zip("ab", flat)]
    labels = [["A: λa 1, λr 1", "lip-sync r 0.50"], ["B", "r"]]
    path = side_by_side(tmp_path / "ab.mp4", videos, labels, audio, 16000, chunk=4)
    info = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    assert "Video: h264" in info and "Audio: aac" in info and info.count("Stream #") == 2
    assert "784x428" in info  # two 64 px panels upscaled x6 (384 + 4 px on each side), under a 44 px label band
    frames, sound, _ = read_video(path)
    assert len(frames) == 10 and abs(len(sound) - 6400) <= 1024  # every frame; the audio as long as the video
    left, right = frames[:, LABEL_PX + 8 :, GAP_PX + 8 : 392 - GAP_PX - 8], frames[:, LABEL_PX + 8 :, 400:-12]
    assert abs(float(left.mean()) - 40) < 3 and abs(float(right.mean()) - 200) < 3  # A on the left, B on the right
    assert list(work.iterdir()) == []


def test_page_css_scales_video_by_whole_factors():
    from space.layout import crisp_size, page_css

    assert crisp_size(128, 384) == 384 and crisp_size(128, 320) == 256 and crisp_size(512, 384) == 512
    css = page_css(128)
    assert "pixelated" in css and "384px" in css and "256px" in css
