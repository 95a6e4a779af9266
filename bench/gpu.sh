#!/usr/bin/env bash
# One command for a GPU machine: the GPU throughput set and a 2-GPU MirroredStrategy check, figures to stdout.
#
#     bash bench/gpu.sh            # from the repository root, in the environment of requirements-gpu.txt
#
# 1. bench/throughput.py --gpu --stage1: tiny@32 and efficientnet_b3@64, then efficientnet_b3@224 in float32,
#    mixed_float16 and mixed_bfloat16, XLA off and on: pipeline vs bare model.fit samples/s and their ratio,
#    Stage 1 epoch time with the feature cache off and on.
# 2. bench/checkpoint_bytes.py: per-epoch checkpoint bytes before/after (EfficientNetB3 at 224, three branches).
# 3. With two or more GPUs: a tiny demo search under --device_mode multi (MirroredStrategy) that must finish,
#    log "2 replica(s) in sync" and write summary.csv. With one GPU this step is skipped and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import tensorflow as tf; g = tf.config.list_physical_devices('GPU'); print('GPUs:', len(g)); \
[print(' ', d.name, tf.config.experimental.get_device_details(d)) for d in g]; assert g, 'no GPU visible'"
python bench/throughput.py --gpu --stage1
python bench/checkpoint_bytes.py
gpus=$(python -c "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))" 2>/dev/null)
if [ "$gpus" -lt 2 ]; then
  echo "multi-GPU check skipped: $gpus GPU(s) visible, MirroredStrategy across GPUs needs 2"
  exit 0
fi
logs=$(mktemp -d)
python main.py --mode search --config configs/demo.yaml --device_mode multi --cv_folds 2 \
  --combinations metadata+depth_rgb --run_name gpu_multi_check --set "runtime.logs_dir=$logs" \
  --set data.image_size=32 --set train.pretrain.epochs=2 --set train.stage1.epochs=2 --set train.stage2.epochs=1 \
  --set forest.n_estimators=20 --set search.bootstrap_resamples=200
grep -m1 "replica(s) in sync" "$logs/gpu_multi_check/run.log"
cat "$logs/gpu_multi_check/summary.csv"
echo "multi-GPU check passed: $logs/gpu_multi_check"
