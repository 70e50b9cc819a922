"""Synthetic moving-shapes video dataloaders (LazyConfig piece), registered as moving_shapes_train /
moving_shapes_val (YouTube-VIS records: one per frame, with the clip's frame list).

Train: (reference, target) frame pairs from VideoPairMapper, the reference 2-5 frames earlier (the
official YolactEdge gap), both under the same flip and resize, with the EXACT flow between them
(MovingShapesFlow renders it from the clip's motion record) as `flow`. Test: VideoEvaluator plays
the val clips (the official 5 keyframe phases) through the model, mapping frames with the test
mapper. `flow_dataloader` holds the test loader and evaluator of flow pre-training instead: val
frame pairs with their exact flow, scored by FlowEPEEvaluator (an experiment config swaps them in:
dataloader.test, dataloader.evaluator = flow_dataloader.test, flow_dataloader.evaluator).

Loading this config writes nothing: the set is generated under moving_shapes_default_root()
($DETECTRON2_DATASETS/moving_shapes, else ~/.cache/yolact_d2/datasets/moving_shapes) when a split is
first read (~10 s; skipped when the folder already holds it with the same parameters). Class names
are in MetadataCatalog right away.

To change the data, set MOVING_SHAPES in your experiment config and call prepare_moving_shapes
again, e.g.
    prepare_moving_shapes(moving_shapes_default_root(), **dict(MOVING_SHAPES, num_train_clips=200))
"""
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from omegaconf import OmegaConf

from yolact_d2.data import YolactDatasetMapper
from yolact_d2.data.augmentations import YolactResize
from yolact_d2.data.loaders import build_yolact_train_loader
from yolact_d2.data.moving_shapes import (
    moving_shapes_default_root,
    moving_shapes_flow_source,
    prepare_moving_shapes,
)
from yolact_d2.data.shapes import DEFAULT_KINDS
from yolact_d2.data.video import VideoPairMapper
from yolact_d2.evaluation import FlowEPEEvaluator, VideoEvaluator

# ~10 s to generate; sized for the README's video command (flow pre-training, fine-tuning and the
# 5-phase evaluation on a 2-core CPU). At the generator's default motion (<= 3 px a frame, sizes
# 0.2-0.45) warped-frame mask AP stays within 2 points of keyframe AP, but there is little for
# feature transfer to gain at the 8x8 P4 / 4x4 P5 grids: warping the main job model's keyframe P4/P5
# by the EXACT flow raises their cosine to the recomputed maps by only +0.0009 / +0.0003.
# MOVING_SHAPES_FAST is a set where transfer matters (exact-flow warping: +0.020 / +0.006), but the
# official-EPE flow net collapses to zero flow there (the squared EPE of flow_pretrain_fast.py learns
# it; see the README's Video section), and the default set already meets the video targets.
MOVING_SHAPES = dict(num_train_clips=80, num_val_clips=10, num_frames=20, image_size=128, seed=0)
MOVING_SHAPES_FAST = dict(MOVING_SHAPES, max_speed=10.0, min_size=0.3, max_size=0.5, leave_prob=0.05,
                          enter_prob=0.05)
NUM_CLASSES = len(DEFAULT_KINDS)  # circle, rectangle, triangle, star: the shapes set's classes
INPUT_SIZE = MOVING_SHAPES["image_size"]
prepare_moving_shapes(moving_shapes_default_root(), **MOVING_SHAPES)  # registers; generates on first read

dataloader = OmegaConf.create()

dataloader.train = L(build_yolact_train_loader)(
    # Frames where every object is out or hidden are no targets, but stay reachable as references.
    dataset=L(get_detection_dataset_dicts)(names="moving_shapes_train", filter_empty=True),
    mapper=L(VideoPairMapper)(
        is_train=True,
        augmentations=[
            L(T.RandomFlip)(prob=0.5, horizontal=True, vertical=False),
            L(YolactResize)(size=INPUT_SIZE),
        ],
        image_format="BGR",
        mask_format="bitmask",  # the masks are RLE
        num_classes=NUM_CLASSES,
        reference_gap=(2, 5),
        flow_source=L(moving_shapes_flow_source)(dataset_name="${...dataset.names}"),
    ),
    total_batch_size=8,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="moving_shapes_val", filter_empty=False),
    mapper=L(YolactDatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
    num_workers=1,
)
dataloader.evaluator = L(VideoEvaluator)(dataset_name="${..test.dataset.names}", keyframe_interval=5)

flow_dataloader = OmegaConf.create()
flow_dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="moving_shapes_val", filter_empty=False),
    # eval mode: resize only, and gaps cycling through reference_gap (reproducible pairs)
    mapper=L(VideoPairMapper)(
        is_train=False,
        augmentations=[L(YolactResize)(size=INPUT_SIZE)],
        image_format="BGR",
        reference_gap=(2, 5),
        flow_source=L(moving_shapes_flow_source)(dataset_name="${...dataset.names}"),
    ),
    num_workers=1,
)
flow_dataloader.evaluator = L(FlowEPEEvaluator)(dataset_name="${..test.dataset.names}")
