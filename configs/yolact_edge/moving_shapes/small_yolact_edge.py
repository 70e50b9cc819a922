"""The small CPU YolactEdge video model (a `model` piece; no side effects): the main job's small
YOLACT (configs/shapes/small_yolact.py, same parts and key names, so its checkpoint loads) in the
YolactEdge meta-architecture, plus FlowNetMini and SPA at the 48-channel FPN width.

The flow net is the official layout narrowed for the CPU: a 48 -> 16 pre-conv (official 256 -> 64)
and 16/32/64-channel stages (official 64/128/256), scale/bias maps at the FPN width. At the 128 input
C3 is 16x16, so the flows come out at 8x8 (P4) and 4x4 (P5).
"""
from detectron2.config import LazyCall as L

from yolact_d2.modeling import SPA, FlowNetMini, YolactEdge

from ...shapes.small_yolact import FPN_CHANNELS, INPUT_SIZE, NUM_CLASSES, model  # noqa: F401

model._target_ = YolactEdge
model.flow_net = L(FlowNetMini)(
    in_channels=FPN_CHANNELS, reduce_channels=16, encode_channels=16, feature_channels=FPN_CHANNELS
)
# SPA as in the official vid configs, but its refine convs start at zero (beyond official: random
# init), so SPA starts as the identity. With random init a few hundred CPU iterations leave the warped
# P4 farther from the recomputed one than no SPA (cosine 0.867 vs 0.910 on the first set).
model.spa = L(SPA)(channels=FPN_CHANNELS, num_levels=2, normalized=False, zero_init=True)
model.training_stage = "video"
# Official yolact_edge_vid flow settings: cosine feature matching on P4/P5 at "L+P", weight 1,
# the annotated frame's own full-pass losses too (base_backward).
model.feature_match_locations = "L+P"
model.feature_match_weight = 1.0
model.base_backward = True
model.video_flow_loss_weight = 0.0

# train.init_may_miss of the video configs: only these parts may be missing from an image model.
VIDEO_PARTS = [r"^flow_net\.", r"^spa\."]
