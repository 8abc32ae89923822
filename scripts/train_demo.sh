#!/usr/bin/env bash
# The exact commands that trained the bundled demo model (assets/portrait-rt-demo) on this project's 2-core CPU.
# Every step resumes from its newest checkpoint if re-run; WORK holds data, runs and caches (not in git).
set -euo pipefail
WORK=${WORK:-/work/cache}
THREADS=${THREADS:-1}  # one thread: on a shared, oversubscribed CPU, OpenMP barriers across 2 threads stall

# 1. The synthetic corpus, rendered once to clip shards (128², 8 s clips; ~2 s per clip).
python -m portrait_rt prepare synthetic "$WORK/corpus128" --num-clips 320 --duration 8 --resolution 128

# 2. The VAE: L1 + KL, M = 0..3 references, progressive 5 -> 17 frames. A narrower VAE than the `demo` preset
#    (half the channels) so that training, latent caching and real-time decoding fit a shared 2-core CPU.
VAE_CONFIG='{"block_out_channels":[8,16,32,64],"feature_channels":64,"latent_block_out_channels":[64,64],"decoder_block_out_channels":[8,16,32,64],"decoder_latent_block_out_channels":[64,64],"ref_num_attention_heads":2,"ref_attention_head_dim":32}'
python -m portrait_rt train vae --data "$WORK/corpus128" --output-dir "$WORK/runs/vae" --preset demo \
  --config-json "$VAE_CONFIG" --stages 5x2:450,17x1:80 --learning-rate 5e-4 --lr-warmup-steps 30 \
  --kl-weight 1e-4 --checkpointing-steps 50 --log-every 10 --threads "$THREADS"
