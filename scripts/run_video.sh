#!/usr/bin/env bash
# YolactEdge on video, from nothing, on the CPU: set-up (no-op if done), the main job's image model if
# missing, the synthetic moving-shapes video set (generated when first read), flow pre-training,
# video fine-tuning, the 5-phase video evaluation (AP tables for all frames, keyframes and each warp
# distance; the same model with every frame recomputed; the flow EPE), and a demo on a val clip.
# Killed half-way, it resumes: every stage continues from its last checkpoint when run again.
# VIDEO_ABLATION=1 also fine-tunes without flow pre-training (the comparison in the README).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-$PWD/datasets}
CFG=configs/yolact_edge/moving_shapes
OUT=output/yolact_edge_moving_shapes
T0=$SECONDS
stage() { echo "[video] $* ($((SECONDS - T0)) s)"; }

if [ ! -f output/yolact_shapes/model_final.pth ]; then
  stage "the main job's image model (configs/shapes/yolact_shapes.py) is missing: training it"
  "$PY" tools/train_net.py --config-file configs/shapes/yolact_shapes.py --resume train.device=cpu
fi
stage "flow pre-training ($CFG/flow_pretrain.py; ends with the EPE on val flows)"
"$PY" tools/train_net.py --config-file $CFG/flow_pretrain.py --resume
stage "video fine-tuning ($CFG/video_finetune.py; ends with the 5-phase video AP tables)"
"$PY" tools/train_net.py --config-file $CFG/video_finetune.py --resume
stage "the same model with warping replaced by recomputation (every frame a keyframe)"
"$PY" tools/train_net.py --config-file $CFG/video_finetune.py --eval-only \
  train.init_checkpoint=$OUT/video_finetune/model_final.pth dataloader.evaluator.keyframe_interval=1 \
  train.output_dir=$OUT/video_finetune/recompute
if [ "${VIDEO_ABLATION:-0}" = 1 ]; then  # what flow pre-training buys: ~2 min more
  stage "fine-tuning without flow pre-training ($CFG/video_finetune_no_flow_pretrain.py)"
  "$PY" tools/train_net.py --config-file $CFG/video_finetune_no_flow_pretrain.py --resume
fi
stage "demo on a moving-shapes val clip"
"$PY" -c "from yolact_d2.data.moving_shapes import moving_shapes_default_root, write_clip_video; \
write_clip_video(moving_shapes_default_root(), 0, '$OUT/val_clip0.mp4', split='val')"
"$PY" tools/demo.py --config-file $CFG/video_finetune.py --weights $OUT/video_finetune/model_final.pth \
  --video-input $OUT/val_clip0.mp4 --output $OUT/demo_val_clip0.mp4
stage "done: logs and metrics under $OUT/, the demo in $OUT/demo_val_clip0.mp4"
