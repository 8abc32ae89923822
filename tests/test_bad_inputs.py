"""Bad and unusual inputs through the Space's public API, one table: each case's exact outcome.

One `python app.py` (tiny random pipeline, short limits) serves the whole table through `gradio_client`. A case
either works (an mp4 as long as the audio, plus its lip-sync readout) or fails with a clear error: it names the field
and shows no server path, traceback or third-party jargon. A good request follows every bad one in the table, so the
app keeps serving.

    python -m pytest -q tests/test_bad_inputs.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from portrait_rt.video import ffmpeg_exe, probe
from tests.conftest import speech_like
from tests.test_app import ROOT, _free_port

EXAMPLES = ROOT / "assets" / "examples"
MAX_AUDIO_S = 6  # the server's clip limit here (PORTRAIT_RT_MAX_AUDIO_S)
MAX_UPLOAD_MB = 1
JARGON = (
    "/tmp",
    "traceback",
    "errno",
    "ffmpeg",
    "pillow",
    "pil ",
    "libsndfile",
    "dbfs",
    "<class",
    "nonetype",
    "bad request",
)

# ----------------------------------------------------------------------------------------------------- inputs
RATE = 16000


def _wav(path, samples, rate=RATE, subtype=None):
    sf.write(path, samples, rate, subtype=subtype)
    return path


def _encode(path, source, *args):
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(source), *args, str(path)], check=True)
    return path


def _image(path, mode="RGB", size=(80, 96), fmt=None, **save):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8))
    if mode == "I;16":
        image = Image.fromarray((np.linspace(0, 65535, size[0] * size[1]).reshape(size[1], size[0])).astype(np.uint16))
    elif mode == "F":
        image = Image.fromarray(np.linspace(0, 1, size[0] * size[1], dtype=np.float32).reshape(size[1], size[0]))
    else:
        image = rgb.convert(mode)
    image.save(path, format=fmt, **save)
    return path


def _files(d: Path) -> dict[str, Path]:
    """Every input file of the table, written once."""
    speech = speech_like(1.2)
    f = {"speech": _wav(d / "speech.wav", speech)}
    f["speech_long"] = _wav(d / "long.wav", speech_like(MAX_AUDIO_S + 2))
    f["speech_near_limit"] = _wav(d / "near_limit.wav", speech_like(MAX_AUDIO_S - 0.5))
    f["antiphase"] = _wav(d / "antiphase.wav", np.stack([speech, -speech], axis=1))
    f["stereo"] = _wav(d / "stereo.wav", np.stack([speech, 0.5 * speech], axis=1))
    f["six_channels"] = _wav(d / "six.wav", np.repeat(speech[:, None], 6, axis=1))
    f["int16_8k"] = _wav(d / "8k.wav", speech[::2], 8000, "PCM_16")
    f["float_44k"] = _wav(d / "44k.wav", np.interp(np.arange(52920) / 44100 * RATE, np.arange(speech.size), speech))
    f["silent"] = _wav(d / "silent.wav", np.zeros(RATE, np.float32))
    f["no_samples"] = _wav(d / "empty.wav", np.zeros(0, np.float32))
    f["nan"] = _wav(d / "nan.wav", np.full(RATE, np.nan, np.float32), subtype="FLOAT")
    f["too_loud"] = _wav(d / "loud.wav", 1000 * speech, subtype="FLOAT")
    f["rate_2k"] = _wav(d / "2k.wav", speech[::8], 2000)
    f["very_short"] = _wav(d / "short.wav", speech[:800])
    f["flac"] = _wav(d / "speech.flac", speech)
    f["ogg"] = _wav(d / "speech.ogg", speech)
    f["mp3"] = _encode(d / "speech.mp3", f["speech"], "-c:a", "libmp3lame")
    f["m4a"] = _encode(d / "speech.m4a", f["speech"], "-c:a", "aac")
    f["webm"] = _encode(d / "speech.webm", f["speech"], "-c:a", "libopus")
    f["m4a_long"] = _encode(d / "long.m4a", f["speech_long"], "-c:a", "aac")
    f["mp4_with_audio"] = _encode(
        d / "clip.mp4", f["speech"], "-f", "lavfi", "-i", "color=c=gray:s=64x64:d=1.2", "-shortest", "-c:a", "aac"
    )
    (d / "notes.wav").write_text("this is not audio at all" * 20)
    f["text_as_audio"] = d / "notes.wav"
    (d / "zero.wav").write_bytes(b"")
    f["zero_bytes_audio"] = d / "zero.wav"
    f["png_as_audio"] = _image(d / "as_audio.png")
    # images
    f["rgb"] = _image(d / "rgb.png")
    f["grey16"] = _image(d / "grey16.png", "I;16")
    f["float_tiff"] = _image(d / "float.tiff", "F")
    f["rgba"] = _image(d / "rgba.png", "RGBA")
    f["palette"] = _image(d / "palette.png", "P")
    f["la"] = _image(d / "la.png", "LA")
    f["cmyk"] = _image(d / "cmyk.jpg", "CMYK")
    f["grey"] = _image(d / "grey.png", "L")
    f["one_bit"] = _image(d / "bw.png", "1")
    f["webp"] = _image(d / "rgb.webp")
    f["bmp"] = _image(d / "rgb.bmp")
    f["gif"] = _image(d / "anim.gif", "P", save_all=True, append_images=[Image.new("P", (80, 96))])
    exif = Image.Exif()
    exif[274] = 6  # rotated 90 degrees
    f["exif_rotated"] = _image(d / "exif.jpg", exif=exif)
    f["wide_strip"] = _image(d / "strip.png", size=(600, 16))
    f["tiny"] = _image(d / "tiny.png", size=(8, 8))
    f["thin"] = _image(d / "thin.png", size=(600, 15))
    f["huge_dimensions"] = d / "huge.png"
    Image.new("1", (10_000, 5_000)).save(f["huge_dimensions"])  # 50 MP in a small file
    (d / "notes.png").write_text("this is not an image")
    f["text_as_image"] = d / "notes.png"
    (d / "zero.png").write_bytes(b"")
    f["zero_bytes_image"] = d / "zero.png"
    f["truncated"] = d / "truncated.png"
    f["truncated"].write_bytes(f["rgb"].read_bytes()[:300])
    f["svg"] = d / "face.svg"
    f["svg"].write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><circle r="20"/></svg>')
    f["wav_as_image"] = f["speech"]
    f["oversize_upload"] = d / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (700, 700, 3), np.uint8)).save(f["oversize_upload"])
    assert f["oversize_upload"].stat().st_size > MAX_UPLOAD_MB * 1e6
    return f


# ----------------------------------------------------------------------------------------------------- the table
GOOD = {"ref1": "rgb", "ref2": None, "ref3": None, "audio": "speech"}
SETTINGS = {"guidance_audio": 2, "guidance_reference": 2, "steps": 1, "seed": 0, "block_size": 2}
_FILE = {"_type": "gradio.FileData"}


def case(expect, field=None, **change):
    return {"expect": expect, "field": field, "change": change}


CASES = {
    # images (file names in the files table, or None for an empty slot)
    "png rgb": case("works"),
    "png 16-bit grey": case("works", ref1="grey16"),
    "tiff float": case("works", ref1="float_tiff"),
    "png transparent": case("works", ref1="rgba"),
    "png palette": case("works", ref1="palette"),
    "png grey + alpha": case("works", ref1="la"),
    "jpeg cmyk": case("works", ref1="cmyk"),
    "png grey": case("works", ref1="grey"),
    "png 1-bit": case("works", ref1="one_bit"),
    "webp": case("works", ref1="webp"),
    "bmp": case("works", ref1="bmp"),
    "gif animated": case("works", ref1="gif"),
    "jpeg exif-rotated": case("works", ref1="exif_rotated"),
    "wide strip 600x16": case("works", ref1="wide_strip"),
    "only reference 2": case("works", ref1=None, ref2="rgb"),
    "three references": case("works", ref2="grey", ref3="cmyk"),
    "tiny 8x8": case("error", "Reference 1", ref1="tiny"),
    "thin 600x15": case("error", "Reference 1", ref1="thin"),
    "50 megapixels": case("error", "Reference 1", ref1="huge_dimensions"),
    "text named .png": case("error", "Reference 1", ref1="text_as_image"),
    "empty image file": case("error", "Reference 1", ref1="zero_bytes_image"),
    "truncated png": case("error", "Reference 1", ref1="truncated"),
    "svg": case("error", "Reference 1", ref1="svg"),
    "wav as image": case("error", "Reference 1", ref1="wav_as_image"),
    "bad reference 3": case("error", "Reference 3", ref3="text_as_image"),
    "no reference": case("error", "Reference 1", ref1=None),
    # audio
    "flac": case("works", audio="flac"),
    "ogg": case("works", audio="ogg"),
    "mp3": case("works", audio="mp3"),
    "m4a (aac)": case("works", audio="m4a"),
    "webm (opus)": case("works", audio="webm"),
    "mp4 video with speech": case("works", audio="mp4_with_audio"),
    "stereo": case("works", audio="stereo"),
    "stereo in antiphase": case("works", audio="antiphase"),
    "six channels": case("works", audio="six_channels"),
    "int16 at 8 kHz": case("works", audio="int16_8k"),
    "float at 44.1 kHz": case("works", audio="float_44k"),
    "50 ms of audio": case("works", audio="very_short"),
    "no audio": case("error", "Speech audio", audio=None),
    "silent": case("error", "Speech audio", audio="silent"),
    "wav with no samples": case("error", "Speech audio", audio="no_samples"),
    "all NaN": case("error", "Speech audio", audio="nan"),
    "float peaking at 1000": case("error", "Speech audio", audio="too_loud"),
    "2 kHz sample rate": case("error", "Speech audio", audio="rate_2k"),
    "text named .wav": case("error", "Speech audio", audio="text_as_audio"),
    "empty audio file": case("error", "Speech audio", audio="zero_bytes_audio"),
    "png as audio": case("error", "Speech audio", audio="png_as_audio"),
    "wav over the length limit": case("error", "Speech audio", audio="speech_long"),
    "m4a over the length limit": case("error", "Speech audio", audio="m4a_long"),
    # settings
    "seed 123456": case("works", seed=123456),
    "block size 4.0": case("works", block_size=4.0),
    "steps 2.5": case("works", steps=2.5),
    "guidance 1 (none)": case("works", guidance_audio=1, guidance_reference=1),
    "seed -1": case("error", "Seed", seed=-1),
    "seed 2^40": case("error", "Seed", seed=2**40),
    "seed text": case("error", "Seed", seed="abc"),
    "seed missing": case("error", "Seed", seed=None),
    "audio guidance 0": case("error", "Audio guidance", guidance_audio=0),
    "audio guidance 100": case("error", "Audio guidance", guidance_audio=100),
    "audio guidance text": case("error", "Audio guidance", guidance_audio="x"),
    "audio guidance true": case("error", "Audio guidance", guidance_audio=True),
    "reference guidance -5": case("error", "Reference guidance", guidance_reference=-5),
    "steps 0": case("error", "Denoising steps", steps=0),
    "steps 51": case("error", "Denoising steps", steps=51),
    "block size '4' (a string, as the API page's snippet sends it)": case("works", block_size="4"),
    "block size 3": case("error", "Block size", block_size=3),
    "block size missing": case("error", "Block size", block_size=None),
    # path strings (gradio_client uploads the named file from the caller's machine: the server reads only that copy)
    # and oversize uploads
    "reference /etc/passwd": case("error", "Reference 1", ref1={"path": "/etc/passwd", "meta": _FILE}),
    "audio ../../etc/passwd": case("error", "Speech audio", audio={"path": "../../../../etc/passwd", "meta": _FILE}),
    "reference app.py": case("error", "Reference 1", ref1={"path": str(ROOT / "app.py"), "meta": _FILE}),
    "upload over the size limit": case("refused", ref1="oversize_upload"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py` with the tiny pipeline and short limits; yields (url, files); killed at the end."""
    port = _free_port()
    env = {
        **os.environ,
        "PORTRAIT_RT_MODEL": "preset:tiny",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PORTRAIT_RT_MAX_AUDIO_S": str(MAX_AUDIO_S),
        "PORTRAIT_RT_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
        "PORTRAIT_RT_JOBS_PER_SESSION": "2",
        "OMP_NUM_THREADS": "1",
    }
    log_path = tmp_path_factory.mktemp("server") / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            files = _files(tmp_path_factory.mktemp("inputs"))
            url = f"http://127.0.0.1:{port}/"
            from gradio_client import Client

            deadline = time.monotonic() + 240
            while True:
                assert proc.poll() is None, log_path.read_text()[-2000:]
                try:
                    client = Client(url, verbose=False)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    assert time.monotonic() < deadline, "app.py did not start"
                    time.sleep(1)
            yield client, files, url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _arg(value, files):
    from gradio_client import handle_file

    if isinstance(value, str) and value in files:
        return handle_file(str(files[value]))
    return value


def _submit(client, files, change: dict):
    inputs = {**GOOD, **SETTINGS, **change}
    args = [_arg(inputs[k], files) for k in ("ref1", "audio", "ref2", "ref3")]  # the required inputs first
    args += [inputs[k] for k in SETTINGS]
    return client.submit(*args, api_name="/generate")


def _outcome(client, files, change) -> tuple[str, str]:
    """(works | error | refused, the message or the readout)."""
    from gradio_client.exceptions import AppError, ValidationError

    try:
        video, _plot, readout = _submit(client, files, change).result(timeout=120)
    except (AppError, ValidationError) as err:
        return "error", str(err)
    except Exception as err:  # noqa: BLE001 - Gradio's own refusals (paths, sizes) come as other exceptions
        return "refused", f"{type(err).__name__}: {err}"
    audio = files[{**GOOD, **change}["audio"]]
    seconds = float(probe(video)["duration"])
    expected = sf.info(str(audio)).duration if str(audio).endswith(".wav") else 1.2
    assert abs(seconds - expected) <= 0.1, (seconds, expected)
    return "works", readout


def test_every_bad_input_has_its_exact_outcome(server):
    client, files, _ = server
    results, wrong = {}, []
    for name, c in CASES.items():
        got, message = _outcome(client, files, c["change"])
        results[name] = (got, message)
        if got != c["expect"]:
            wrong.append(f"{name}: expected {c['expect']}, got {got}: {message}")
        elif got == "error":
            lowered = message.lower()
            if c["field"] not in message or any(word in lowered for word in JARGON):
                wrong.append(f"{name}: unclear error: {message}")
        assert "root:" not in message  # /etc/passwd's content never comes back
        if c["expect"] != "works":  # a good request still works after every bad one
            assert _outcome(client, files, {})[0] == "works", f"the app stopped serving after {name!r}"
    summary = {k: sum(got == k for got, _ in results.values()) for k in ("works", "error", "refused")}
    print(f"\n{len(CASES)} cases: {summary}")
    assert len(CASES) >= 60
    assert not wrong, "\n".join(wrong)


def test_server_files_are_not_served(server):
    import urllib.error
    import urllib.request

    _, _, url = server
    for probe_path in ("/etc/passwd", "../../../../etc/passwd", str(ROOT / "app.py")):
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}gradio_api/file={probe_path}", timeout=10)


def test_one_session_cannot_fill_the_queue(server):
    """A session's third File job while two are waiting or running is refused at once, naming the audio field."""
    from gradio_client.exceptions import ValidationError

    client, files, _ = server
    # ~20x the work of the table's clip (5.5 s at 30 steps): still running when the third one asks, on a fast CPU too
    long = {"audio": "speech_near_limit", "steps": 30}
    jobs = [_submit(client, files, long) for _ in range(2)]
    time.sleep(0.5)
    with pytest.raises(ValidationError, match="speech_audio.*already have 2"):
        _submit(client, files, long).result(timeout=60)
    for job in jobs:
        job.result(timeout=120)
    _submit(client, files, {}).result(timeout=60)  # once they are done, the session may queue again


def test_live_cannot_be_called_through_the_api(server):
    client, _, _ = server
    assert "/live" not in client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    with pytest.raises(ValueError):
        client.submit(None, None, None, 2, 2, 1, 0, 2, api_name="/live")


def test_reference_files_reach_the_loader_untouched(tmp_path):
    """Gradio's image conversion is bypassed: the project's loader gets the uploaded file itself."""
    from gradio.data_classes import FileData

    import app

    for mode in ("I;16", "F", "RGBA", "P", "CMYK"):
        path = _image(tmp_path / f"{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'tiff'}", mode)
        slot = app.reference_image(1, "required")
        assert slot.preprocess(FileData(path=str(path))) == str(path)


def test_offline_memory_does_not_grow_with_the_clip(tiny_pipe, monkeypatch, tmp_path):
    """File mode holds one block at a time: its peak memory for 60 s of audio is within a fraction of the clip's
    frames of its peak for 20 s. Blocks of 128x128 frames (the bundled model's size) come from a stand-in for the
    pipeline, so the test measures what File mode keeps (mp4 writer, lip-sync measure), not the model's speed."""
    import tracemalloc

    import app
    from portrait_rt.constants import SAMPLES_PER_FRAME
    from portrait_rt.streaming import BlockRecord, BlockTiming

    def blocks(audio, **_):
        samples, _rate = audio
        rng = np.random.default_rng(0)
        for i, first in enumerate(range(0, -(-samples.size // SAMPLES_PER_FRAME), 16)):
            frames = rng.integers(0, 255, (16, 128, 128, 3), np.uint8)
            piece = samples[first * SAMPLES_PER_FRAME : (first + 16) * SAMPLES_PER_FRAME]
            frames = frames[: -(-piece.size // SAMPLES_PER_FRAME)]
            yield BlockRecord(frames, piece, first, BlockTiming(i, len(frames), 1.0, 1.0, 1.0, 1.0, 1.0))

    monkeypatch.setattr(tiny_pipe, "generate_blocks", lambda reference_images, audio, **kw: blocks(audio))
    monkeypatch.setattr(app.limits, "MAX_AUDIO_S", 120)
    peaks = {}
    for seconds in (20, 60):
        audio = _wav(tmp_path / f"{seconds}.wav", speech_like(seconds))
        tracemalloc.start()
        refs = (str(EXAMPLES / "portrait_a.png"), None, None)
        with pytest.warns(UserWarning, match="no face found"):  # the 128 px cartoon is searched for the 64 px model
            path, out = app.Handlers(tiny_pipe)._generate(refs, str(audio), 2, 2, 1, 0, 4, "x")
        peaks[seconds] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert out.num_frames == seconds * 25 and probe(path)["duration"] == pytest.approx(seconds, abs=0.1)
    frames_40s = 40 * 25 * 128 * 128 * 3  # what holding the extra 40 s of frames would add (49 MB)
    print(peaks)
    assert peaks[60] - peaks[20] < 0.2 * frames_40s, peaks


def test_crafted_paths_are_refused_without_showing_the_servers_folders(server):
    """A path the page never sends, named in a File API call over plain HTTP (not uploaded, as gradio_client would):
    Gradio refuses it, and the answer names no server folder (before: "Cannot move <app folder>/app.py to the gradio
    cache dir ...", which showed the app's working folder; a relative path resolved against it)."""
    import httpx

    _, files, url = server
    with httpx.Client(timeout=60) as http:
        uploaded = http.post(url + "gradio_api/upload", files=[("files", open(files["speech"], "rb"))]).json()
        meta = {"_type": "gradio.FileData"}
        for path in (str(ROOT / "app.py"), "assets/examples/portrait_a.png", str(ROOT / "missing.wav")):
            data = [{"path": path, "meta": meta}, {"path": uploaded[0], "meta": meta}, None, None, 2, 2, 1, 0, 2]
            answer = http.post(url + "gradio_api/call/generate", json={"data": data})
            assert answer.status_code == 400, answer.text  # refused: not uploaded by a user
            assert str(ROOT) not in answer.text and os.getcwd() not in answer.text, answer.text
            assert Path(path).name in answer.text  # it still says which file
