#!/usr/bin/env bash
# The main job, from nothing: set-up (no-op if done), then generate the synthetic shapes set,
# train a small YOLACT on it from scratch on the CPU, evaluate it with Detectron2's COCOEvaluator
# (bbox + segm AP table) and draw validation predictions into output/.
# Extra arguments are key=value config overrides, e.g. `bash scripts/run_main.sh train.max_iter=300`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
CONFIG=configs/shapes/yolact_shapes.py
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-$PWD/datasets}
T0=$SECONDS
echo "[main] synthetic shapes set under $DETECTRON2_DATASETS/shapes, training $CONFIG on the CPU"
# --resume: a killed run continues from its last checkpoint (a finished one just re-evaluates).
"$PY" tools/train_net.py --config-file "$CONFIG" --resume train.device=cpu "$@"
echo "[main] drawing validation predictions"
"$PY" tools/visualize_predictions.py --config-file "$CONFIG" --output output/yolact_shapes/predictions "$@"
echo "[main] done in $((SECONDS - T0)) s (set-up excluded): metrics in output/yolact_shapes/metrics.json," \
  "pictures in output/yolact_shapes/predictions/"
