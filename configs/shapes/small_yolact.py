"""A small YOLACT for CPU training from scratch (the `model` of the shapes configs; no side effects).

Everything YOLACT is kept (FPN P3-P7, protonet, shared head, prior matching, OHEM, mask / semantic-seg
losses, Fast NMS); only sizes shrink: a narrow ResNet-18-style backbone with BatchNorm (no ImageNet
weights), a 48-channel FPN / protonet / head, 16 prototypes, a 128x128 input.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock

from yolact_d2.modeling import set_head_width, set_num_classes

from ..common.models.yolact import model

NUM_CLASSES = 4  # circle, rectangle, triangle, star (the generator's default kinds)
INPUT_SIZE = 128  # the shapes images' own size: nothing to gain from upsampling
WIDTH = 16  # res2 channels; res3 / res4 / res5 have 2x / 4x / 8x
FPN_CHANNELS = 48
NUM_PROTOTYPES = 16

model.backbone.bottom_up = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=WIDTH, norm="BN"),
    stages=[
        L(ResNet.make_stage)(
            block_class=BasicBlock,
            num_blocks=2,
            in_channels=WIDTH * (2 ** max(i - 1, 0)),
            out_channels=WIDTH * (2**i),
            stride_per_block=[1 if i == 0 else 2, 1],
            norm="BN",
        )
        for i in range(4)
    ],
    out_features=["res3", "res4", "res5"],
    freeze_at=0,
)
set_head_width(model, FPN_CHANNELS, NUM_PROTOTYPES)
set_num_classes(model, NUM_CLASSES)
model.input_size = INPUT_SIZE
# At 550 the official prior sizes (24..384 px) are ~3x each level's stride; at a 128 input the same
# relative sizes would be smaller than the strides. Use 2x the stride (16..256 px), two sizes per
# level (like YOLACT++'s octave scales) and real aspect ratios (no v1 square-anchor bug).
model.prior_generator.scales = [[s, s * 2**0.5] for s in (16, 32, 64, 128, 256)]
model.prior_generator.square_anchors = False
model.head.num_anchors = 6
# Trained from scratch: no RGB swap needed for ImageNet weights.
model.to_rgb = False
# At most a handful of shapes an image: 20 detections are plenty (and COCO evaluation is cheaper).
model.post_processor.max_detections = 20
