import numpy as np
import pytest
import soundfile as sf

from portrait_rt.audio import AudioStreamBuffer, is_silent, load_audio, to_float_mono
from portrait_rt.constants import SAMPLE_RATE


def _tone(seconds=1.0, rate=SAMPLE_RATE, freq=220.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_load_audio_formats(tmp_path, fmt):
    x = _tone(1.0, 44100)
    path = tmp_path / f"a.{fmt}"
    sf.write(path, np.stack([x, x], axis=1), 44100)  # stereo file
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.size - SAMPLE_RATE) <= 0.06 * SAMPLE_RATE  # mp3/ogg codecs may pad a little
    assert 0.3 < np.abs(y).max() <= 1.0


@pytest.mark.parametrize(
    "dtype,scale", [(np.int16, 32767), (np.int32, 2**31 - 1), (np.float32, 1.0), (np.float64, 1.0), (np.uint8, None)]
)
def test_dtypes_and_channels(dtype, scale):
    x = _tone(0.5, 22050)
    if scale is None:
        arr = ((x + 1) * 127.5).astype(np.uint8)
    else:
        arr = (x * scale).astype(dtype)
    mono = load_audio((arr, 22050))
    stereo_nc = load_audio((np.stack([arr, arr], 1), 22050))
    stereo_cn = load_audio((np.stack([arr, arr], 0), 22050))
    assert mono.size == SAMPLE_RATE // 2
    np.testing.assert_allclose(mono, stereo_nc, atol=1e-6)
    np.testing.assert_allclose(mono, stereo_cn, atol=1e-6)
    np.testing.assert_allclose(np.abs(mono).max(), 0.5, atol=0.02)


def test_gradio_order_and_resampler_quality():
    x = _tone(1.0, 48000, freq=1000.0)
    y = load_audio((48000, x))  # Gradio's (rate, samples) order
    ref = _tone(1.0, SAMPLE_RATE, freq=1000.0)
    assert y.size == ref.size
    assert np.abs(y[100:-100] - ref[100:-100]).max() < 1e-2  # a real resampler: no aliasing, no drift


@pytest.mark.parametrize(
    "bad,match",
    [
        ((np.zeros(0, np.float32), 16000), "empty"),
        ((np.full(100, np.nan, np.float32), 16000), "NaN"),
        ((np.full(100, 3000.0, np.float32), 16000), "int16"),
        ((np.zeros(100, np.float32), 10), "Sample rate"),
        ((np.zeros(100, np.float32), 16000.5), "Sample rate"),
        ((np.zeros((3, 3, 3), np.float32), 16000), "shape"),
        ((np.array(["a", "b"]), 16000), "numeric"),
        (12, "file path"),
        ("/nonexistent/file.wav", "does not exist"),
    ],
)
def test_bad_audio_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        load_audio(bad)


def test_unreadable_file(tmp_path):
    p = tmp_path / "junk.wav"
    p.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(ValueError, match="not an audio file this app can read"):
        load_audio(p)


def test_isolated_nans_become_silence_and_silence_detected():
    x = _tone(0.1)
    x[5] = np.nan
    y = to_float_mono(x)
    assert np.isfinite(y).all() and y[5] == 0
    assert is_silent(np.zeros(1000, np.float32)) and not is_silent(x[:100] * 0 + 0.1)


def _stream(x, rate, sizes, pop=640):
    buf = AudioStreamBuffer()
    out, i = [], 0
    for n in sizes:
        buf.push(x[i : i + n], rate)
        i += n
        while (block := buf.pop(pop)) is not None:
            assert block.size == pop
            out.append(block)
    buf.close()
    out.append(buf.pop(buf.available, partial=True))
    return np.concatenate(out)


@pytest.mark.parametrize("rate", [16000, 22050, 44100, 48000])
def test_stream_buffer_any_chunking_identical(rate):
    rng = np.random.default_rng(rate)
    x = (0.3 * rng.standard_normal(rate * 2)).astype(np.float32)
    whole = _stream(x, rate, [x.size])
    sizes, n = [], 0
    while n < x.size:
        sizes.append(int(min(rng.integers(0, rate // 2), x.size - n)))
        n += sizes[-1]
    chunked = _stream(x, rate, sizes)
    assert np.array_equal(whole, chunked)
    assert abs(whole.size - 2 * SAMPLE_RATE) <= 1
    np.testing.assert_allclose(whole, load_audio((x, rate)), atol=1e-5)


def test_stream_buffer_rate_change_and_close():
    buf = AudioStreamBuffer()
    buf.push(_tone(0.5, 48000), 48000)
    buf.push(_tone(0.5, 16000), 16000)
    buf.close()
    assert abs(buf.total_samples - SAMPLE_RATE) <= 2
    assert buf.pop(10**9) is None and buf.pop(10**9, partial=True).size == buf.total_samples
    with pytest.raises(ValueError, match="closed"):
        buf.push(_tone(0.1), 16000)
