"""`benchmarks/gpu_train_check.sh` (the GPU training check) as a CPU smoke test at preset tiny: every phase runs,
checkpoints and resumes, and the JSON carries the figures a GPU run reports. No timings are asserted."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_train_check_runs_on_cpu_at_preset_tiny(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the script's python3: this one
    cmd = ["bash", "benchmarks/gpu_train_check.sh", "--preset", "tiny", "--steps", "8", "--clips", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "train_check_tiny_cpu.json").read_text())
    assert results["data"]["clips"] == 2 and results["latents"]["clips"] == 2
    for phase in ("vae", "dit", "dit_fsdp"):
        r = results[phase]
        assert r["loss_finite"] and r["loss_falls"], (phase, r)
        assert r["steps"] == 8 and r["stopped_at"] == r["resumed_at"] == 4, (phase, r)  # saved, then resumed
        assert r["step_s"] > 0 and r["samples_per_s"] > 0 and r["checkpoint_gib"] >= 0
    assert results["dit"]["exported"] and results["dit"]["window_latent_frames"] == 8
    # On CPU accelerate runs the FSDP launch unsharded (FSDP is for accelerators); the JSON says so.
    assert results["dit_fsdp"]["distributed_type"] == "NO" and not results["dit_fsdp"]["sharded"]
    assert not (tmp_path / "work").exists()  # checkpoints cleaned up


def test_projection_of_the_paper_schedules():
    spec = importlib.util.spec_from_file_location("gpu_train_check", REPO / "benchmarks" / "gpu_train_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    hours = check.project({"vae": {"sample_s": 1.0}, "dit": {"sample_s": 0.1}})
    # DiT: 250k steps x 256 samples x 0.1 s. VAE stage 1: 400k x 512 samples at 256² x 5 frames, each costing
    # (256² x 5) / (512² x 17) of the measured 1 s; the 512² x 17-frame stage costs the measured second.
    assert hours["dit"]["gpu_hours"] == round(250_000 * 256 * 0.1 / 3600)
    stages = {(s["resolution"], s["frames"]): s["gpu_hours"] for s in hours["vae"]["stages"]}
    assert stages[(256, 5)] == round(400_000 * 512 * (256 * 256 * 5) / (512 * 512 * 17) / 3600)
    assert stages[(512, 17)] == round(20_000 * 256 / 3600)
    assert hours["vae"]["gpu_hours"] == sum(stages.values()) and "dit_fsdp" not in hours
