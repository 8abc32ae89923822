"""Input checks in the UI's words, and the library's input errors as pop-ups in the browser."""

from __future__ import annotations

import contextlib

import torch

from portrait_rt.constants import MAX_REFERENCES

MAX_SEED = 2**31 - 1


@contextlib.contextmanager
def user_errors():
    """Turn the library's `ValueError`s (bad input, with what to change) into `gr.Error` pop-ups in the browser."""
    import gradio as gr

    try:
        yield
    except ValueError as err:
        raise gr.Error(str(err)) from err


def collect_references(*images) -> list:
    """The uploaded reference images (None for empty slots) -> a list of 1-3; `ValueError` otherwise."""
    refs = [im for im in images if im is not None]
    if not refs:
        raise ValueError("Upload a portrait in 'Reference 1' (the face to animate).")
    if len(refs) > MAX_REFERENCES:
        raise ValueError(f"Got {len(refs)} reference images; use 1 to {MAX_REFERENCES}.")
    return refs


def make_generator(seed) -> torch.Generator:
    """A CPU generator seeded with `seed` (an integer 0 .. 2^31-1); the pipeline draws its noise from it."""
    if seed is None or not float(seed).is_integer() or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"Seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
    return torch.Generator().manual_seed(int(seed))


def require_audio(audio) -> str:
    """The uploaded audio file path; `ValueError` if there is none (the pipeline checks silence and length)."""
    if audio is None or (isinstance(audio, str) and not audio):
        raise ValueError("Upload a speech audio file (wav, mp3, flac, ogg...) or pick an example below.")
    return audio
