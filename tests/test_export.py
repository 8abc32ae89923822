"""Exported pipeline folders: the bundled folder as `save_pretrained` writes it (no code), the published copy with its
remote code that loads without portrait_rt, the library's own loading of that copy, the model card."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from portrait_rt.pipeline import PortraitRTPipeline
from portrait_rt.training.export import (
    PIPELINE_ENTRY,
    _closure,
    export,
    metrics_table,
    usage_section,
    write_hub_folder,
)
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
    out = pipe([inputs["reference"]], (inputs["audio"], 16000), num_inference_steps=2, align_faces=False,
               generator=torch.Generator().manual_seed(0))  # the test portrait has no face to search for
    np.save(sys.argv[3], out.frames)
""")


@pytest.fixture
def exported(tiny_pipe, tmp_path):
    """The (perturbed) tiny pipeline saved, and its published copy with the code (`export --hub-folder`)."""
    tiny_pipe.save_pretrained(tmp_path / "saved")
    return write_hub_folder(tmp_path / "saved", tmp_path / "pipe")


def test_exported_folder_loads_without_portrait_rt(exported, tiny_pipe, portraits, tmp_path):
    """The published copy, `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` in a Python that
    cannot import portrait_rt: silent (no missing-package or config warnings on stderr) and frame-for-frame the
    library's output."""
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
    expected = tiny_pipe([portraits[0]], (audio, 16000), num_inference_steps=2, generator=generator, align_faces=False)
    np.testing.assert_array_equal(np.load(tmp_path / "frames.npy"), expected.frames)


def test_library_loads_an_exported_folder_with_its_own_classes(exported, tiny_pipe, capfd, tmp_path):
    """The published copy's own code is not run by `PortraitRTPipeline.from_pretrained`, and diffusers' warning
    about `auto_map` (which it writes itself) is not shown; saved again, it is a plain folder without code."""
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
    pipe.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "model_index.json").read_text())["vae"] == [
        "portrait_rt.models.vae",
        "CausalVideoVAE",
    ]
    assert "auto_map" not in (tmp_path / "again" / "vae" / "config.json").read_text()


def test_publishing_again_leaves_no_stale_file(exported, tmp_path):
    """`export --hub-folder` over a copy published earlier: the same files again, and none left over."""
    files = {p.relative_to(exported): p.read_bytes() for p in exported.rglob("*") if p.is_file()}
    (exported / "module_of_an_older_version.py").write_text("raise ImportError\n")
    write_hub_folder(tmp_path / "saved", exported)
    assert {p.relative_to(exported): p.read_bytes() for p in exported.rglob("*") if p.is_file()} == files


def test_each_model_folder_holds_only_the_modules_it_needs():
    """A published folder holds each model's code once, beside its weights: the pipeline's modules import no model."""
    assert set(_closure("portrait_rt.models.vae")) == {
        "portrait_rt.models.vae",
        "portrait_rt.models.vae_blocks",
        "portrait_rt.constants",
    }
    pipeline = _closure("portrait_rt.pipeline")
    assert "portrait_rt.streaming" in pipeline and not [m for m in pipeline if m.startswith("portrait_rt.models")]


def test_the_published_copy_is_the_same_model(tmp_path):
    """The copy with the code has the bundled folder's weights and config values, so the Space's model fingerprint
    (which the cached example is checked against) is the same for both, and changes with a config value."""
    from space.examples import model_fingerprint

    hub = write_hub_folder(DEMO, tmp_path / "hub")
    assert (hub / f"{PIPELINE_ENTRY}.py").is_file() and (hub / "vae" / "vae_portrait_rt.py").is_file()
    assert model_fingerprint(hub) == model_fingerprint(DEMO)
    config = json.loads((hub / "vae" / "config.json").read_text())
    (hub / "vae" / "config.json").write_text(json.dumps({**config, "scaling_factor": 1.0}))
    assert model_fingerprint(hub) != model_fingerprint(DEMO)


def test_the_bundled_folder_is_what_save_pretrained_writes(tiny_pipe, tmp_path):
    """No code in the bundled folder (it loads with `PortraitRTPipeline.from_pretrained`; the code is written when
    publishing), and its files and model_index.json are those `save_pretrained` writes."""
    tiny_pipe.save_pretrained(tmp_path / "saved")
    written = {p.relative_to(tmp_path / "saved") for p in (tmp_path / "saved").rglob("*") if p.is_file()}
    bundled = {p.relative_to(DEMO) for p in DEMO.rglob("*") if p.is_file()}
    assert bundled - written == {Path("README.md"), Path("metrics.json"), Path("contact_sheet.png")}
    assert written <= bundled
    index = json.loads((DEMO / "model_index.json").read_text())
    assert index == json.loads((tmp_path / "saved" / "model_index.json").read_text())
    for name in ("vae", "transformer", "audio_encoder"):
        assert not {"_name_or_path", "auto_map"} & set(json.loads((DEMO / name / "config.json").read_text()))


def test_export_writes_a_hub_model_card(tmp_path):
    """From trained-run folders (here the tiny preset's components) to a folder with a model card in the Hub's format:
    YAML front matter, how to load it with portrait-rt and (once published) without, the report's table and sheet;
    configs without the run folders' paths; `--hub-folder` adds the code."""
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
    assert f'PortraitRTPipeline.from_pretrained("{tmp_path / "out"}")' in card.text
    assert "trust_remote_code=True" in card.text and "--hub-folder" in card.text
    assert "](contact_sheet.png)" in card.text and "lip-sync r" in card.text
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    assert not list((tmp_path / "out").rglob("*.py"))
    assert str(tmp_path) not in "".join(p.read_text() for p in (tmp_path / "out").rglob("*.json"))

    from portrait_rt.cli import main

    assert main(["export", "--output", str(tmp_path / "out"), "--hub-folder", str(tmp_path / "hub")]) == 0
    assert (tmp_path / "hub" / f"{PIPELINE_ENTRY}.py").is_file()
    assert (tmp_path / "hub" / "README.md").read_text() == (tmp_path / "out" / "README.md").read_text()


def test_bundled_card_is_the_exports():
    """The bundled folder's metrics.json is the report its model card shows (a re-trained model re-exported with
    `--metrics`), not an older model's; its "Use" section is the one `export` writes."""
    metrics = json.loads((DEMO / "metrics.json").read_text())
    card = (DEMO / "README.md").read_text()
    assert metrics_table(metrics) in card
    assert "\n".join(usage_section("assets/portrait-rt-demo", 128)) in card


# a path of the machine that trained and measured the model (its work, scratch and home folders)
MACHINE_PATH = re.compile(r"(?<![\w.$}-])/(?:work|tmp|root|home)/[\w.-]")


def test_no_committed_file_names_this_machines_folders():
    """Configs, cards, metrics, docs and scripts say where things are relative to the checkout (or through a
    variable such as $WORK), never by the absolute path of the machine they were made on, which means nothing where
    they are read next."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    found = []
    for name in tracked.stdout.split("\0"):
        path = REPO / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary: weights, images, audio
        text = data.decode("utf-8", errors="replace")
        found += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}" for m in MACHINE_PATH.finditer(text)]
    assert not found, "\n".join(found)
