"""The one pipeline loader and the one default-model policy (the Space, `generate` and `bench` all use them)."""

import argparse
import re

import pytest
import torch

from portrait_rt.loading import (
    BUNDLED_MODEL,
    FALLBACK_MODEL,
    ModelChoice,
    add_model_arguments,
    choose_model,
    load_from_args,
    load_pipeline,
)


def test_choose_model_order(monkeypatch, tmp_path):
    monkeypatch.delenv("PORTRAIT_RT_MODEL", raising=False)
    missing = tmp_path / "nope"
    fallback = choose_model(None, missing)
    assert fallback.model == FALLBACK_MODEL and fallback.is_random and "--model" in fallback.notice
    assert choose_model(None, tmp_path) == ModelChoice(str(tmp_path))  # the bundled folder, when it exists
    monkeypatch.setenv("PORTRAIT_RT_MODEL", "preset:demo")
    assert choose_model(None, tmp_path).model == "preset:demo"  # the environment beats the default
    assert choose_model("some/hub-id", tmp_path) == ModelChoice("some/hub-id")  # --model beats both


def test_the_default_is_the_bundled_demo_model(monkeypatch):
    monkeypatch.delenv("PORTRAIT_RT_MODEL", raising=False)
    assert (BUNDLED_MODEL / "model_index.json").is_file()  # found from the package, whatever the working directory
    assert choose_model() == ModelChoice(str(BUNDLED_MODEL))


def test_load_a_preset_on_cpu_in_float32_and_in_bfloat16():
    pipe = load_pipeline("preset:tiny", "cpu")
    assert pipe.device.type == "cpu" and pipe.transformer.dtype == torch.float32
    low = load_pipeline("preset:tiny", "cpu", torch.bfloat16)
    assert low.transformer.proj_out.weight.dtype == torch.bfloat16
    assert low.transformer.blocks[0].scale_shift_table.dtype == torch.float32  # _keep_in_fp32_modules, as diffusers


def test_command_line_options_load_the_pipeline(monkeypatch):
    monkeypatch.delenv("PORTRAIT_RT_MODEL", raising=False)
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    threads = torch.get_num_threads()
    try:
        args = parser.parse_args(
            ["--model", "preset:tiny", "--device", "cpu", "--dtype", "bfloat16", "--threads", "1"]
        )
        pipe, choice = load_from_args(args)
        assert choice == ModelChoice("preset:tiny") and torch.get_num_threads() == 1
        assert pipe.transformer.proj_out.weight.dtype == torch.bfloat16
    finally:
        torch.set_num_threads(threads)


def test_cpu_threads_default_to_half_the_cores(monkeypatch):
    """Without --threads a CPU pipeline takes half the usable cores (at least 1), not torch's all-cores default that
    collapses on a shared machine (1.8 FPS against 25 measured with a busy neighbour, see `default_threads`)."""
    from portrait_rt.loading import default_threads, load_pipeline

    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
        assert default_threads() == 4
        load_pipeline("preset:tiny", "cpu")
        assert torch.get_num_threads() == 4
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
        assert default_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_a_missing_local_folder_is_reported_as_one(tmp_path, monkeypatch):
    """A typo in a local path is named as a missing folder, at once: not looked up on the Hub (which, offline, ended
    in "check your internet connection" after ~25 s of retries)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets").mkdir()
    (tmp_path / "empty").mkdir()
    for model in ("assets/portrait-rt-dmeo", "./nope", str(tmp_path / "nope"), "a/b/c"):
        with pytest.raises(FileNotFoundError, match=f"Model folder '{re.escape(model)}' does not exist"):
            load_pipeline(model, "cpu")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_pipeline("empty", "cpu")


def test_an_unreachable_hub_id_names_both_places(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without network: no retries
    with pytest.raises(OSError, match="'someone/no-such-model' is not a folder here .* Hugging Face Hub"):
        load_pipeline("someone/no-such-model", "cpu")


def test_generate_without_a_model_refuses_random_weights(monkeypatch, tmp_path, capsys):
    """With only the library installed (no bundled folder) `generate` says what to pass instead of writing noise."""
    from portrait_rt import cli, loading

    monkeypatch.delenv("PORTRAIT_RT_MODEL", raising=False)
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tmp_path / "not-installed")
    out = tmp_path / "out.mp4"
    example = BUNDLED_MODEL.parents[1] / "examples"
    argv = ["generate", "--ref", str(example / "portrait_a.png"), "--audio", str(example / "speech_a.wav")]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--out", str(out)])
    assert exit_.value.code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "No model to load" in err and "--model preset:tiny for randomly initialised weights" in err


def test_cuda_on_a_machine_without_one_says_what_to_pass():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ValueError, match="no CUDA GPU .* pass device='cpu'"):
        load_pipeline("preset:tiny", "cuda")
