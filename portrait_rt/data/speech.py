"""Speech for the synthetic corpus from Debian's `espeak-ng`: random sentences, voices, languages, pauses.

Every choice is drawn from a seed, so a clip's speech is reproducible. Some languages and voice variants are
reserved for `split="eval"` (`EVAL_LANGUAGES`, `EVAL_VARIANTS`): the train split never draws them.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from ..constants import SAMPLE_RATE

# espeak-ng language voices (`espeak-ng --voices`). Train and eval sets are disjoint.
TRAIN_LANGUAGES = ("en-us", "en-gb", "fr-fr", "it", "pt", "nl", "sv", "pl", "id", "fi", "ro", "cs")
EVAL_LANGUAGES = ("de", "es", "en-gb-scotland")
# espeak-ng voice variants (`espeak-ng --voices=variant`), appended as "<language>+<variant>".
TRAIN_VARIANTS = ("m1", "m2", "m3", "m5", "f1", "f2", "f3", "Alex", "Andy", "Annie", "adam", "linda", "steph", "max")
EVAL_VARIANTS = ("m4", "f4", "f5", "john", "belinda")

# Words for English voices; other languages read pseudo-words made of syllables (which every voice can say).
_ENGLISH_WORDS = (
    "the a one two three four five six seven eight nine ten good morning evening hello thanks please yes no maybe "
    "water river mountain city street house window garden table paper pencil music picture story people friend "
    "family mother father sister brother teacher doctor market coffee bread apple orange banana summer winter "
    "spring autumn weather today tomorrow yesterday always never often quickly slowly really very little big "
    "small happy tired ready open close start stop listen speak look watch think believe remember forget learn "
    "understand because although however while after before during around through between under over again "
    "video portrait stream model voice camera light colour simple moving frame audio signal sound talking"
).split()
_CONSONANTS = ("p", "b", "t", "d", "k", "g", "m", "n", "l", "r", "s", "f", "v", "z", "ch", "sh", "j", "w", "h")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ea")


@dataclass(frozen=True)
class SpeechSpec:
    """Everything `synthesize_speech` needs: voice, prosody and SSML text (with `<break>` pauses)."""

    language: str
    variant: str
    speed: int  # words per minute (espeak-ng -s)
    pitch: int  # 0..99 (espeak-ng -p)
    ssml: str
    lead_silence: float  # seconds of silence before the speech
    tail_silence: float  # seconds of silence after the speech

    @property
    def voice(self) -> str:
        """espeak-ng voice name, e.g. "fr-fr+f3"."""
        return f"{self.language}+{self.variant}"


def _check_split(split: str) -> None:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


def _word(rng: np.random.Generator, english: bool) -> str:
    if english:
        return str(rng.choice(_ENGLISH_WORDS))
    n = int(rng.integers(1, 4))
    return "".join(str(rng.choice(_CONSONANTS)) + str(rng.choice(_VOWELS)) for _ in range(n))


def sample_speech_spec(rng: np.random.Generator, split: str = "train", num_phrases: int | None = None) -> SpeechSpec:
    """Draw a voice (language + variant of `split`), speed, pitch and a few random phrases separated by pauses."""
    _check_split(split)
    languages, variants = (TRAIN_LANGUAGES, TRAIN_VARIANTS) if split == "train" else (EVAL_LANGUAGES, EVAL_VARIANTS)
    language = str(rng.choice(languages))
    variant = str(rng.choice(variants))
    english = language.startswith("en")
    num_phrases = int(rng.integers(1, 4)) if num_phrases is None else num_phrases
    parts = []
    for p in range(num_phrases):
        words = [_word(rng, english) for _ in range(int(rng.integers(2, 8)))]
        parts.append(" ".join(words) + str(rng.choice([".", ",", "?", "!"])))
        if p < num_phrases - 1:
            parts.append(f'<break time="{int(rng.integers(150, 900))}ms"/>')  # a pause: the mouth closes
    return SpeechSpec(
        language=language,
        variant=variant,
        speed=int(rng.integers(120, 210)),
        pitch=int(rng.integers(20, 80)),
        ssml="<speak>" + " ".join(parts) + "</speak>",
        lead_silence=float(rng.uniform(0.0, 0.5)),
        tail_silence=float(rng.uniform(0.1, 0.5)),
    )


def synthesize_speech(spec: SpeechSpec, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Run espeak-ng for `spec`; returns float32 mono audio at `sample_rate` with speech RMS near -20 dBFS."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found: install the Debian package (`apt-get install espeak-ng`)")
    cmd = [exe, "-m", "-v", spec.voice, "-s", str(spec.speed), "-p", str(spec.pitch), "--stdout", spec.ssml]
    wav = subprocess.run(cmd, check=True, capture_output=True).stdout
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != sample_rate:
        audio = soxr.resample(audio, sr, sample_rate).astype(np.float32)
    voiced = np.abs(audio) > 1e-3
    rms = float(np.sqrt(np.mean(audio[voiced] ** 2))) if voiced.any() else 0.0
    if rms > 0:
        audio = audio * (10 ** (-20 / 20) / rms)
    lead = np.zeros(int(spec.lead_silence * sample_rate), np.float32)
    tail = np.zeros(int(spec.tail_silence * sample_rate), np.float32)
    return np.clip(np.concatenate([lead, audio, tail]), -1.0, 1.0).astype(np.float32)
