"""The trainers' FSDP2 path on CPU: sharded parameters, per-process EMA shards, sharded checkpoints, exact resume and
the final gather into one unsharded module.

accelerate takes its FSDP path on accelerators only. Here a one-process gloo group is reported to it as a GPU group
(two methods of its `PartialState` patched, for the pinned accelerate==1.15), so that its `prepare`, `save_state`,
`load_state` and `get_state_dict` run their FSDP2 code with torch's CPU `fully_shard`. On a GPU the same code runs
unpatched: `benchmarks/gpu_train_check.sh` launches it with `docs/accelerate_fsdp.yaml`.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from portrait_rt.data.shards import write_synthetic_shards
from portrait_rt.training.common import TrainConfig
from portrait_rt.training.dit import DiTTrainer

REPO = Path(__file__).resolve().parents[1]
FSDP_ENV = {  # what `accelerate launch --config_file docs/accelerate_fsdp.yaml` sets
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "FlowDiTBlock",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(out, stop_at_step=None):
    return TrainConfig(output_dir=str(out), max_steps=4, stop_at_step=stop_at_step, batch_size=2, log_every=1,
                       learning_rate=1e-3, checkpointing_steps=100)  # fmt: skip


def _fsdp_train_then_resume(latents: str, out: str) -> None:
    """In a fresh process (one rank of a gloo group): 2 steps and stop, then a fresh trainer resumes to 4."""
    import accelerate.state
    from accelerate.utils import DistributedType

    def cpu_as_gpu_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        return "gloo", DistributedType.MULTI_GPU

    def cpu_device(self):
        self.device = self.device or torch.device("cpu")

    accelerate.state.PartialState._prepare_backend = cpu_as_gpu_backend
    accelerate.state.PartialState.set_device = cpu_device
    torch.set_num_threads(1)
    report = {"losses": [], "sharded": [], "parameter_types": set()}
    for stop in (2, None):
        trainer = DiTTrainer(_config(out, stop), latents, preset="tiny")
        report["sharded"].append(trainer.sharded)
        report["parameter_types"] |= {type(p).__name__ for p in trainer.model.parameters()}
        report["losses"] += [r["loss"] for r in trainer.train()]
    report["parameter_types"] = sorted(report["parameter_types"])
    (Path(out) / "report.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    from portrait_rt.models.vae import CausalVideoVAE
    from portrait_rt.training.latents import cache_latents
    from portrait_rt.training.vae import VAETrainer

    root = tmp_path_factory.mktemp("fsdp")
    shards = write_synthetic_shards(root / "shards", 2, resolution=64, duration=2.0)
    VAETrainer(TrainConfig(output_dir=str(root / "vae"), max_steps=1), shards.root, preset="tiny").train()
    cache_latents(CausalVideoVAE.from_pretrained(root / "vae" / "vae"), shards, root / "latents.pt")
    return root / "latents.pt"


@pytest.mark.slow
def test_fsdp_trains_resumes_and_exports_like_the_unsharded_trainer(latents, tmp_path):
    from safetensors.torch import load_file

    plain = [r["loss"] for r in DiTTrainer(_config(tmp_path / "plain"), str(latents), preset="tiny").train()]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **FSDP_ENV, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
    out = tmp_path / "fsdp"
    code = "import sys; from tests.test_training_fsdp import _fsdp_train_then_resume as f; f(sys.argv[1], sys.argv[2])"
    subprocess.run([sys.executable, "-c", code, str(latents), str(out)], cwd=REPO, env=env, check=True, timeout=600)

    report = json.loads((out / "report.json").read_text())
    assert report["sharded"] == [True, True] and report["parameter_types"] == ["DTensor"]
    # The same losses as the unsharded trainer, through a sharded checkpoint and a resume.
    np.testing.assert_allclose(report["losses"], plain, rtol=1e-5)
    checkpoint = out / "checkpoints" / "checkpoint-4"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir()
    # The EMA shard was saved at step 2, loaded by the resumed trainer and kept averaging: as the unsharded EMA.
    ema = torch.load(checkpoint / "ema_shard_0.pt", weights_only=True)
    plain_ema = torch.load(tmp_path / "plain" / "checkpoints" / "checkpoint-4" / "custom_checkpoint_0.pkl",
                           weights_only=False)  # fmt: skip
    assert ema["optimization_step"] == plain_ema["optimization_step"] == 4
    for x, y in zip(ema["shadow_params"], plain_ema["shadow_params"], strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    # The exported EMA weights, gathered from the shards, match the unsharded run's.
    name = "transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "plain" / name), load_file(out / name)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-3, rtol=1e-3)
