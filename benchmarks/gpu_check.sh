#!/usr/bin/env bash
# Streaming speed on a lent GPU, checked in one command (issue 16): eager vs the fast path (`enable_fast_path()`),
# 1/4/8 streams, block size 1, a short flatness run, the demo model's correctness (fast vs eager, bf16 vs fp32) and
# real-time streams, then the GPU-only tests (`pytest -m gpu`). Meant to take under 8 minutes on one H100/H200.
#
#   bash benchmarks/gpu_check.sh OUT_DIR                                   # preset paper, on the GPU
#   bash benchmarks/gpu_check.sh OUT_DIR --model preset:tiny --device cpu --quick --backend aot_eager  # smoke test
#
# Prints a table and writes OUT_DIR/gpu_check_*.json (then copy it to benchmarks/results/, named by the device).
# Extra flags go to benchmarks/gpu_check.py (--budget, --flat-minutes, --phases ...). Exit status 1 if a phase or a
# test failed.
#
# On the lent device machine (its own torch, no diffusers/soxr): put the wheels in .whl/ first (the device README's
# `pip download` line: diffusers==0.42.1, soxr, importlib_metadata, lazy-importer; carry `.whl`); they are installed
# into a temporary folder for this run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: gpu_check.sh OUT_DIR [gpu_check.py flags]}
shift
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    && export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT_DIR"
start=$(date +%s)
python3 benchmarks/gpu_check.py "$OUT_DIR" "$@"
status=$?
# The GPU-only tests (skipped without CUDA: CUDA graphs == eager, the whole fast path == eager); log beside the JSON.
python3 -m pytest -q -p no:cacheprovider tests/test_fast_path.py -m gpu 2>&1 | tee "$OUT_DIR/gpu_tests.log" | tail -3
status=$((status || ${PIPESTATUS[0]}))
echo "gpu_check: $(( $(date +%s) - start )) s, exit $status"
exit $status
