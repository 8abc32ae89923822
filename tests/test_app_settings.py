"""The Space's privacy and disk settings, without a browser."""

from pathlib import Path

import app
from portrait_rt.loading import ModelChoice

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def test_no_telemetry_and_temporary_files_are_deleted(tiny_pipe, monkeypatch):
    monkeypatch.setattr(app, "PIPE", tiny_pipe)
    demo = app.build_demo(ModelChoice("preset:tiny"))
    assert demo.analytics_enabled is False  # no version check or launch analytics: nothing leaves the machine
    frequency, age = demo.delete_cache  # Gradio's cached copies of uploads and outputs
    assert 0 < frequency <= 3600 and 0 < age <= 24 * 3600
    refs = (str(EXAMPLES / "portrait_a.png"), None, None)
    path, _ = app._generate(refs, str(EXAMPLES / "speech_b.wav"), 2.0, 2.0, 2, 0, 2, "clip")
    assert Path(app.OUTPUTS.name) in path.parents  # our own outputs: one folder, removed when the process exits
