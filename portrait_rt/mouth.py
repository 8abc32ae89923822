"""The mouth of the synthetic corpus: how the audio drives it and the colour its interior is drawn in.

One room that the renderer (`portrait_rt.data.synthetic` draws the mouth by these rules), the metrics
(`portrait_rt.eval.metrics` measures the opening from pixels and compares it with the opening the audio implies) and
training (the VAE's mouth-weighted loss) all use, so none of them imports another for it:

- `audio_mouth_features` / `audio_to_mouth_opening`: the documented audio -> mouth mapping (opening and spread per
  25 fps frame);
- the colour key: the open mouth's interior is drawn in one reserved colour, `MOUTH_INTERIOR_RGB`, that nothing
  else in a portrait comes near (`key_distance`); `key_membership` turns a distance into a soft membership, 1 within
  `KEY_INNER`, 0 beyond `KEY_OUTER` (blur and small colour shifts degrade it gracefully).
"""

from __future__ import annotations

import numpy as np

from portrait_rt.audio import load_audio
from portrait_rt.constants import SAMPLE_RATE, SAMPLES_PER_FRAME

MOUTH_INTERIOR_RGB = (140, 0, 50)  # reserved colour of the open mouth's interior (a deep crimson)
KEY_CHANNEL_WEIGHTS = (1.0, 2.0, 1.0)  # green counts double in `key_distance` (skin is never green-less)
# Soft membership of a pixel in the mouth interior: 1 within KEY_INNER of `MOUTH_INTERIOR_RGB`, 0 beyond KEY_OUTER.
# The corpus keeps every other colour (and blend of two) >= 100 away; a colour shift of +-15 moves the key < 40.
KEY_INNER, KEY_OUTER = 45.0, 90.0


def key_distance(rgb) -> np.ndarray:
    """Distance of colour(s) `(..., 3)` (0-255) from `MOUTH_INTERIOR_RGB`, channels weighted by
    `KEY_CHANNEL_WEIGHTS`."""
    d = np.asarray(rgb, np.float32) - np.asarray(MOUTH_INTERIOR_RGB, np.float32)
    return np.sqrt(((d * np.asarray(KEY_CHANNEL_WEIGHTS, np.float32)) ** 2).sum(-1))


def key_membership(distance):
    """Soft mouth-interior membership in [0, 1] of a `key_distance` (a numpy array or a torch tensor)."""
    return ((KEY_OUTER - distance) / (KEY_OUTER - KEY_INNER)).clip(0, 1)


_WINDOW = 1024  # 64 ms analysis window centred on each video frame's 40 ms of audio


def audio_mouth_features(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Per-video-frame mouth (opening, spread), each (T,) in [0, 1], T = ceil(len(audio) / 640) at 16 kHz.

    For frame i, a Hann window of 1024 samples centred on samples [640 i, 640 (i+1)):
      level   = RMS in dB after a clip-level gain that puts the 90th percentile of frame RMS at -16 dBFS
      loud    = clip((level + 46) / 30, 0, 1)                 # -46 dBFS and below: closed; -16 dBFS: open
      voicing = E[150, 1000 Hz] / (E[150, 1000 Hz] + E[2.5, 8 kHz])   # vowels open wide, fricatives (s, f) less
      opening = loud * (0.3 + 0.7 * voicing), smoothed by [1/4, 1/2, 1/4] over frames (symmetric: no delay)
      spread  = clip((spectral centroid - 600 Hz) / 2400 Hz, 0, 1)  # "ee" wide, "oo" round; 0.5 in silence
    """
    audio = load_audio((np.asarray(audio), sample_rate)) if sample_rate != SAMPLE_RATE else np.asarray(audio)
    audio = audio.astype(np.float32).reshape(-1)
    t = -(-audio.size // SAMPLES_PER_FRAME)
    if t == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    pad_left = (_WINDOW - SAMPLES_PER_FRAME) // 2
    padded = np.pad(audio, (pad_left, t * SAMPLES_PER_FRAME - audio.size + _WINDOW))
    starts = np.arange(t) * SAMPLES_PER_FRAME
    frames = padded[starts[:, None] + np.arange(_WINDOW)] * np.hanning(_WINDOW).astype(np.float32)  # (T, 1024)
    rms = np.sqrt((frames**2).mean(1) / 0.375)  # 0.375 = mean(hann^2)
    active = rms[rms > 1e-4]
    gain = 10 ** (-16 / 20) / np.percentile(active, 90) if active.size else 1.0
    level = 20 * np.log10(rms * gain + 1e-8)
    loud = np.clip((level + 46) / 30, 0, 1)

    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, 513)
    freqs = np.fft.rfftfreq(_WINDOW, 1 / SAMPLE_RATE)
    low = power[:, (freqs >= 150) & (freqs < 1000)].sum(1)
    high = power[:, (freqs >= 2500) & (freqs < 8000)].sum(1)
    voicing = low / (low + high + 1e-12)
    opening = loud * (0.3 + 0.7 * voicing)
    opening = np.convolve(np.pad(opening, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    centroid = (power * freqs).sum(1) / (power.sum(1) + 1e-12)
    spread = np.where(loud > 0, np.clip((centroid - 600) / 2400, 0, 1), 0.5)
    return opening.astype(np.float32), spread.astype(np.float32)


def audio_to_mouth_opening(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The mouth opening (T,) in [0, 1] the audio implies: the renderer's mapping (see `audio_mouth_features`)."""
    return audio_mouth_features(audio, sample_rate)[0]
