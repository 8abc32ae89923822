"""Input checks in the UI's words: every error names the field and says what to change (no paths, no tracebacks)."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from portrait_rt.audio import is_silent, read_mono
from portrait_rt.faces import FaceAlignment, align_face, no_face_message
from portrait_rt.serving.protocol import (  # noqa: F401 - the live protocol's rules are the Space's too
    GUIDANCE_AUDIO,
    GUIDANCE_REFERENCE,
    SEED,
    STEPS,
    check_reference_count,
    make_generator,
)


@contextlib.contextmanager
def user_errors(field: str | None = None):
    """Turn the library's `ValueError`s (bad input, with what to change) into `gr.Error` pop-ups in the browser,
    prefixed with the field they are about."""
    import gradio as gr

    try:
        yield
    except ValueError as err:
        raise gr.Error(f"{field}: {err}" if field else str(err)) from None


def collect_references(*images, resolution: int) -> list[FaceAlignment]:
    """The uploaded reference files (None for empty slots) -> 1-3 `FaceAlignment`s: each read by the project's loader
    (16-bit, float, palette, transparency, CMYK, EXIF rotation) and cropped on its face to the framing the model was
    trained on (`portrait_rt.faces`); errors name the slot, and a slot without a face gets a warning pop-up (it is
    centre-cropped)."""
    import gradio as gr

    refs = []
    for slot, image in enumerate(images, start=1):
        if image is not None:
            with user_errors(f"Reference {slot}"):
                refs.append(align_face(image, resolution, name=f"Reference {slot}", warn=False))
            if refs[-1].framing == "centre":
                gr.Warning(no_face_message(f"Reference {slot}"))
    check_reference_count(len(refs))
    return refs


def load_speech(audio, max_seconds: float, field: str = "Speech audio") -> tuple:
    """The uploaded audio file -> `(samples, sample_rate)`, at most `max_seconds` long (checked before decoding)."""
    with user_errors(field):
        if audio is None or (isinstance(audio, str) and not audio):
            raise ValueError("upload a speech audio file (wav, mp3, flac, ogg...) or pick an example below.")
        samples, rate = read_mono(audio, max_seconds)
        if is_silent(samples):
            raise ValueError("it is silent; upload a recording of speech for the portrait to say.")
        return samples, rate


def _accepts(component) -> str:
    """What a settings widget takes, in words."""
    choices = getattr(component, "choices", None)
    if choices:
        return "one of " + ", ".join(str(value) for _, value in choices)
    low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
    whole = getattr(component, "precision", None) == 0 or getattr(component, "step", None) == 1
    kind = "a whole number" if whole else "a number"
    if low is not None and high is not None:
        return f"{kind} from {low:g} to {high:g}"
    return kind + (f" of at least {low:g}" if low is not None else "")


@dataclass(frozen=True)
class Invalid:
    """A widget value that Gradio's own check refused, as the message for its field (see `check_setting`)."""

    message: str


def field_checks(*values) -> list[dict]:
    """Results for Gradio's `validator` (it runs as a job asks to join the queue): one per input, failing, with the
    message shown on that field, where the value is `Invalid`."""
    import gradio as gr

    return [gr.validate(not isinstance(v, Invalid), v.message if isinstance(v, Invalid) else "") for v in values]


def check_setting(component):
    """Gradio's own check of a settings widget's value (range, choices, type) -> an `Invalid` naming the field and
    what it takes, for `field_checks` (an exception here would reach the user as a bare "400 Bad Request"); a choice
    of integers is typed integer in the API schema (Gradio's `Radio` says string) and takes "4" as 4."""
    preprocess, accepts = component.preprocess, _accepts(component)
    choices = [value for _, value in getattr(component, "choices", None) or []]
    integers = bool(choices) and all(isinstance(c, int) for c in choices)

    def checked(payload):
        if integers and isinstance(payload, str) and payload.strip().isdigit():
            payload = int(payload)  # as the API page's snippet sends a choice: its type reads Literal['1', '2', '4']
        try:
            value = preprocess(payload)
        except Exception:  # noqa: BLE001 - Gradio's messages do not name the field
            value = None
        if value is None or isinstance(value, bool):
            return Invalid(f"{component.label}: got {repr(payload)[:40]}; use {accepts}.")
        return value

    component.preprocess = checked
    if integers:
        component.api_info = lambda: {"type": "integer", "enum": choices, "title": component.label}
    return component


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"(),;]+")


def hide_paths(text: str) -> str:
    """`text` with every absolute path cut to its file name: a message never shows the server's folders."""
    return _ABSOLUTE_PATH.sub(lambda m: PurePosixPath(m.group(0)).name or "/", text)


async def paths_hidden(request, exc):
    """The app's handler of HTTP errors (Gradio's refusal of a crafted file path names the absolute path, and so the
    app's working folder): the same answer with `hide_paths` applied to its detail."""
    from fastapi.exception_handlers import http_exception_handler

    if isinstance(exc.detail, str):
        exc.detail = hide_paths(exc.detail)
    return await http_exception_handler(request, exc)
