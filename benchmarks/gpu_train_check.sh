#!/usr/bin/env bash
# Training on a GPU, checked in one command (issue 21): meant to take under 6 minutes on one H100/H200 at the paper's
# sizes (not yet run on one: the step counts and --max-minutes guards are estimates).
#
#   bash benchmarks/gpu_train_check.sh                 # preset paper: VAE 512² x 17 frames, DiT 32-frame windows
#   bash benchmarks/gpu_train_check.sh --preset tiny   # the CPU smoke test CI runs (tests/test_gpu_train_check.py)
#
# Phases (benchmarks/gpu_train_check.py): synthetic data -> VAE (bf16, gradient checkpointing; checkpoint at half
# way, resumed by a fresh trainer) -> latent cache -> DiT (the same), then the DiT again with FSDP2 in one process
# under `accelerate launch --config_file docs/accelerate_fsdp.yaml` (the code path of N GPUs), then the projected
# GPU-hours of the paper's schedules. JSON to $OUT (else benchmarks/results/); exit status 1 if a phase failed.
# Extra flags go to gpu_train_check.py (--steps, --vae-batch, --dit-batch, --max-minutes ...).
#
# On a machine without diffusers (the lent device: its own torch, no diffusers): put the wheels in .whl/ first
# (docs/training.md, "Checking a GPU machine"); they are installed into a temporary folder for this run.
set -uo pipefail
cd "$(dirname "$0")/.."
PRESET=paper
EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --preset) PRESET=$2; shift 2 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
OUT_DIR=${OUT:-benchmarks/results}
if [[ -z ${WORK:-} ]]; then  # the paper runs write checkpoints of ~15 GB: RAM beats most disks
  shm_kb=$(df -k --output=avail /dev/shm 2>/dev/null | tail -1)
  WORK=/dev/shm/portrait-rt-train-check
  [[ $PRESET == paper && ${shm_kb:-0} -gt 50000000 ]] || WORK=$(mktemp -d -t portrait-rt-train-check.XXXXXX)
fi
if compgen -G ".whl/*.whl" >/dev/null; then
(docs/training.md, "Checking a GPU machine"); they are installed into a temporary folder for this run.
fi
export PYTHONUNBUFFERED=1 CHECK_STARTED=$(date +%s)
ARGS=(--preset "$PRESET" --work "$WORK" --out "$OUT_DIR")
python3 benchmarks/gpu_train_check.py "${ARGS[@]}" "${EXTRA[@]}" --phases data,vae,latents,dit
status=$?
python3 -m accelerate.commands.launch --config_file docs/accelerate_fsdp.yaml \
  benchmarks/gpu_train_check.py "${ARGS[@]}" --steps 10 "${EXTRA[@]}" --phases dit,report --tag fsdp
status=$((status || $?))
rm -rf "$WORK"
exit $status
