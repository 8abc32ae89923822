"""Exported pipeline folders: remote code that loads without portrait_rt, the library's own loading of them, the model
card and contact sheet; and the bundled demo folder's code."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from portrait_rt.pipeline import PortraitRTPipeline
from portrait_rt.training.export import PIPELINE_ENTRY, _closure, export, metrics_table, write_remote_code
from tests.conftest import speech_like

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "portrait-rt-demo"

pytestmark = pytest.mark.usefixtures("one_thread")

# Runs in a fresh `python -I` (no cwd, no PYTHONPATH on sys.path) where `import portrait_rt` fails, even through an
# editable install's import hook: argv = folder, inputs.npz, frames.npy to write.
REMOTE_LOAD = textwrap.dedent("""
    import sys
    sys.modules["portrait_rt"] = None  # any import of portrait_rt now raises ImportError
    import numpy as np, torch
    import diffusers
    torch.set_num_threads(1)
    diffusers.utils.logging.disable_progress_bar()
    pipe = diffusers.DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
    assert type(pipe).__name__ == "PortraitRTPipeline", type(pipe)
    assert type(pipe).__module__.startswith("diffusers_modules."), type(pipe).__module__
    assert not [name for name in sys.modules if name.startswith("portrait_rt.")]
    pipe.set_progress_bar_config(disable=True)
    inputs = np.load(sys.argv[2])
    out = pipe([inputs["reference"]], (inputs["audio"], 16000), num_inference_steps=2,
               generator=torch.Generator().manual_seed(0))
    np.save(sys.argv[3], out.frames)
""")


@pytest.fixture
def exported(tiny_pipe, tmp_path):
    """The (perturbed) tiny pipeline saved and given its code, as `export` writes it."""
    folder = tmp_path / "pipe"
    tiny_pipe.save_pretrained(folder)
    write_remote_code(folder)
    return folder


def test_exported_folder_loads_without_portrait_rt(exported, tiny_pipe, portraits, tmp_path):
    """`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` in a Python that cannot import
    portrait_rt: silent (no missing-package or config warnings on stderr) and frame-for-frame the library's output."""
    audio = speech_like(1.0)
    np.savez(tmp_path / "inputs.npz", reference=portraits[0], audio=audio)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [str(exported), str(tmp_path / "inputs.npz"), str(tmp_path / "frames.npy")]
    run = subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_LOAD, *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    generator = torch.Generator().manual_seed(0)
    expected = tiny_pipe([portraits[0]], (audio, 16000), num_inference_steps=2, generator=generator)
    np.testing.assert_array_equal(np.load(tmp_path / "frames.npy"), expected.frames)


def test_library_loads_an_exported_folder_with_its_own_classes(exported, tiny_pipe, capfd):
    """The folder's own copy of the code is not run by `PortraitRTPipeline.from_pretrained`, and diffusers' warning
    about `auto_map` (which it writes itself) is not shown."""
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == [PIPELINE_ENTRY, "PortraitRTPipeline"]
    assert json.loads((exported / "vae" / "config.json").read_text())["auto_map"] == {
        "AutoModel": "vae_portrait_rt.CausalVideoVAE"
    }
    capfd.readouterr()
    pipe = PortraitRTPipeline.from_pretrained(exported)
    assert "auto_map" not in capfd.readouterr().err
    assert type(pipe) is PortraitRTPipeline and type(pipe.vae) is type(tiny_pipe.vae)
    assert not [name for name in sys.modules if name.startswith("diffusers_modules")]
    for name in ("vae", "transformer", "audio_encoder"):
        loaded, saved = getattr(pipe, name).state_dict(), getattr(tiny_pipe, name).state_dict()
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_remote_code_refresh_replaces_stale_modules(exported):
    """`export --code-only` on a folder exported earlier: the same files again, and none left over."""
    files = {p: p.read_bytes() for p in exported.rglob("*") if p.suffix in (".py", ".json")}
    (exported / "module_of_an_older_version.py").write_text("raise ImportError\n")
    write_remote_code(exported)
    assert {p: p.read_bytes() for p in exported.rglob("*") if p.suffix in (".py", ".json")} == files


def test_each_model_folder_holds_only_the_modules_it_needs():
    assert set(_closure("portrait_rt.models.vae")) == {
        "portrait_rt.models.vae",
        "portrait_rt.models.vae_blocks",
        "portrait_rt.constants",
    }


def test_export_writes_a_hub_model_card_and_the_code(tmp_path):
    """From trained-run folders (here the tiny preset's components) to a folder with its code and a model card in the
    Hub's format: YAML front matter, how to load it with and without portrait-rt, the report's table and sheet."""
    torch.manual_seed(0)
    pipe = PortraitRTPipeline.from_preset("tiny")
    pipe.vae.save_pretrained(tmp_path / "vae")
    pipe.transformer.save_pretrained(tmp_path / "dit" / "transformer")
    pipe.audio_encoder.save_pretrained(tmp_path / "dit" / "audio_encoder")
    metrics = {"lipsync_r": 0.5, "contact_sheet": "contact_sheet.png"}
    export(tmp_path / "vae", tmp_path / "dit", tmp_path / "out", metrics)

    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "image-to-video" and "talking-portrait" in card.data.tags
    assert f'DiffusionPipeline.from_pretrained("{tmp_path / "out"}", trust_remote_code=True)' in card.text
    assert "](contact_sheet.png)" in card.text and "lip-sync r" in card.text
    assert (tmp_path / "out" / f"{PIPELINE_ENTRY}.py").is_file()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics


def test_bundled_metrics_are_the_cards():
    """The bundled folder's metrics.json is the report its model card shows (a re-trained model re-exported with
    `--metrics`), not an older model's."""
    metrics = json.loads((DEMO / "metrics.json").read_text())
    assert metrics_table(metrics) in (DEMO / "README.md").read_text()


def test_bundled_folder_carries_this_librarys_code(tmp_path):
    """The bundled folder loads without portrait_rt only if its code is the library's current code: a change to
    the pipeline or the models needs `export --code-only` (this test says so)."""
    copy = tmp_path / "demo"
    shutil.copytree(DEMO, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.png"))
    write_remote_code(copy)
    for path in copy.rglob("*"):
        if path.suffix in (".py", ".json"):
            bundled = DEMO / path.relative_to(copy)
            assert bundled.is_file() and bundled.read_text() == path.read_text(), f"{bundled} is not current"
