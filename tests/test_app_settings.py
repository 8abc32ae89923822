"""The Space's privacy and disk settings, without a browser."""

import re
from pathlib import Path

import pytest

import app
from portrait_rt.loading import ModelChoice

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def test_no_telemetry_and_temporary_files_are_deleted(tiny_pipe):
    demo = app.build_demo(tiny_pipe, ModelChoice("preset:tiny"))
    assert demo.analytics_enabled is False  # no version check or launch analytics: nothing leaves the machine
    frequency, age = demo.delete_cache  # Gradio's cached copies of uploads and outputs
    assert 0 < frequency <= 3600 and 0 < age <= 24 * 3600
    refs = (str(EXAMPLES / "portrait_a.png"), None, None)
    with pytest.warns(UserWarning, match="no face found"):  # a 128 px cartoon for the 64 px tiny model: searched
        path, _ = app.Handlers(tiny_pipe)._generate(refs, str(EXAMPLES / "speech_b.wav"), 2.0, 2.0, 2, 0, 2, "clip")
    assert Path(app.OUTPUTS.name) in path.parents  # our own outputs: one folder, removed when the process exits


def test_the_intro_names_the_buttons_on_the_page(tiny_pipe):
    """Every button the intro tells a newcomer to press is on the page under that name (it said Record for Talk)."""
    import gradio as gr

    from space.layout import INTRO

    demo = app.build_demo(tiny_pipe, ModelChoice("preset:tiny"))
    buttons = [b.value for b in demo.blocks.values() if isinstance(b, gr.Button)]
    named = re.findall(r"(?i)press \*\*(.+?)\*\*", INTRO)
    assert "Talk" in named and "Record" not in INTRO
    for name in named:
        assert any(b.startswith(name) for b in buttons), f"the intro says press {name!r}; buttons: {buttons}"
