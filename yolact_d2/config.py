"""yacs configs for YOLACT: `add_yolact_config(cfg)`, the yacs counterpart of the LazyConfig files.

    cfg = get_cfg(); add_yolact_config(cfg); cfg.merge_from_file("configs/yacs/yolact_R_50_FPN_550.yaml")
    model = build_model(cfg)  # the model of configs/yolact/yolact_R_50_FPN_550.py

Detectron2's own keys are used where they exist (MODEL.BACKBONE.NAME / FREEZE_AT, MODEL.RESNETS.*,
MODEL.PIXEL_MEAN / STD, MODEL.WEIGHTS, MODEL.DEVICE, INPUT.FORMAT, TEST.DETECTIONS_PER_IMAGE,
DATASETS.*, SOLVER.*); everything YOLACT adds lives under MODEL.YOLACT. Besides adding keys,
add_yolact_config sets the standard keys whose Detectron2 default does not fit YOLACT to the
official R50-550 values (listed in YOLACT_STANDARD_VALUES), so get_cfg() + add_yolact_config(cfg)
+ MODEL.META_ARCHITECTURE = "Yolact" already is the official YOLACT R50 at 550.
Yolact.from_config (yolact_d2/modeling/yacs_build.py) turns these keys into the model.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_yolact_config", "YOLACT_STANDARD_VALUES"]

# Detectron2 keys whose defaults are replaced: (key path, official YOLACT value, why).
YOLACT_STANDARD_VALUES = (
    ("MODEL.BACKBONE.NAME", "build_yolact_fpn_backbone", "YolactFPN around MODEL.YOLACT.FPN.BOTTOM_UP"),
    ("MODEL.MASK_ON", True, "DatasetMapper loads gt_masks only then"),
    ("MODEL.BACKBONE.FREEZE_AT", 0, "official YOLACT trains every backbone conv"),
    ("MODEL.RESNETS.OUT_FEATURES", ["res3", "res4", "res5"], "the FPN takes C3-C5"),
    ("MODEL.PIXEL_MEAN", [103.94, 116.78, 123.68], "official MEANS (BGR)"),
    ("MODEL.PIXEL_STD", [57.38, 57.12, 58.40], "official STD (BGR)"),
    # The model resizes itself (squash to MODEL.YOLACT.INPUT_SIZE): DefaultPredictor's
    # ResizeShortestEdge must be off (0 = no resize), or images are resized twice.
    ("INPUT.MIN_SIZE_TEST", 0, "the model resizes test images itself"),
    ("INPUT.MASK_FORMAT", "bitmask", "COCO crowd masks are RLE"),
)


def _set(cfg, path: str, value) -> None:
    node = cfg
    *parents, leaf = path.split(".")
    for name in parents:
        node = node[name]
    node[leaf] = value


def add_yolact_config(cfg: CN) -> CN:
    """Add the MODEL.YOLACT node (and MODEL.RESNETS.DEFORM_*, MODEL.DARKNET) to a Detectron2
    `get_cfg()` config, with the official YOLACT R50-550 values; returns cfg. Call it before
    `merge_from_file` of a configs/yacs/*.yaml file."""
    if "YOLACT" in cfg.MODEL:
        raise ValueError("add_yolact_config: cfg already has MODEL.YOLACT; call it once per config.")
    for path, value, _ in YOLACT_STANDARD_VALUES:
        _set(cfg, path, value)

    y = cfg.MODEL.YOLACT = CN()
    y.NUM_CLASSES = 80  # foreground classes
    y.NUM_PROTOTYPES = 32
    # Network input: "squash" (official: every image to INPUT_SIZE x INPUT_SIZE) or
    # "shortest_edge" (short side INPUT_SIZE, long side <= MAX_SIZE, padded onto a fixed canvas).
    y.INPUT_SIZE = 550
    y.RESIZE_MODE = "squash"
    y.MAX_SIZE = 0  # 0: INPUT_SIZE
    y.SIZE_DIVISIBILITY = 0
    y.TO_RGB = True  # swap BGR -> RGB before the backbone (official ImageNet ResNet / DarkNet weights)
    y.SEMSEG_ON = True  # semantic-segmentation branch (a training loss only)
    y.PROTO_FEATURE = "p3"
    y.HEAD_FEATURES = ["p3", "p4", "p5", "p6", "p7"]

    y.FPN = CN()
    # Any BACKBONE_REGISTRY entry returning three stride 8/16/32 features: build_yolact_resnet_backbone,
    # build_yolact_deform_resnet_backbone (YOLACT++), build_yolact_darknet_backbone, Detectron2's
    # build_resnet_backbone / build_regnet... (then set IN_FEATURES to its feature names).
    y.FPN.BOTTOM_UP = "build_yolact_resnet_backbone"
    y.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    y.FPN.OUT_CHANNELS = 256
    y.FPN.NUM_DOWNSAMPLE = 2  # P6, P7

    # Sub-nodes PROTONET, HEAD, ANCHOR, TEST, LOSS: each key is the upper-case name of a
    # constructor argument of ProtoNet, YolactHead, YolactPriorGenerator, YolactPostProcessor,
    # YolactLoss (yolact_d2/modeling/yacs_build.py passes them as they are).
    y.PROTONET = CN()
    y.PROTONET.CONV_DIMS = 256
    y.PROTONET.NUM_CONVS_BEFORE = 3
    y.PROTONET.NUM_CONVS_AFTER = 1

    y.HEAD = CN()
    y.HEAD.NUM_EXTRA_CONVS = 1

    # Priors per FPN level (official backbone.pred_scales / pred_aspect_ratios); the head predicts
    # len(SCALES[i]) x len(ASPECT_RATIOS[i]) per location. Aspect ratios are w/h.
    y.ANCHOR = CN()
    y.ANCHOR.SCALES = [[24.0], [48.0], [96.0], [192.0], [384.0]]
    y.ANCHOR.ASPECT_RATIOS = [[1.0, 0.5, 2.0]] * 5
    y.ANCHOR.USE_PIXEL_SCALES = True
    y.ANCHOR.PREAPPLY_SQRT = False
    y.ANCHOR.SQUARE_ANCHORS = True  # YOLACT v1's square-prior quirk (kept for its weights)

    # Inference (official eval.py defaults); the detection count is TEST.DETECTIONS_PER_IMAGE.
    y.TEST = CN()
    y.TEST.CONF_THRESH = 0.05
    y.TEST.NMS_IOU = 0.5
    y.TEST.TOP_K = 200
    y.TEST.SCORE_THRESH = 0.0
    y.TEST.CLASS_AGNOSTIC = False
    y.TEST.STANDARD_NMS = False
    y.TEST.CROP = True
    y.TEST.MASK_THRESHOLD = 0.5
    y.TEST.INTEGER_BOXES = True

    # YOLACT++ mask re-scoring (FastMaskIoUNet): `scores` stay the class scores, `mask_scores`
    # = class score x predicted mask IoU (YolactCOCOEvaluator evaluates segm with them).
    y.MASK_RESCORING = CN()
    y.MASK_RESCORING.ENABLED = False
    y.MASK_RESCORING.CHANNELS = [8, 16, 32, 64, 128]

    # YolactLoss (official MultiBoxLoss settings of yolact_base_config).
    y.LOSS = CN()
    y.LOSS.POS_IOU = 0.5
    y.LOSS.NEG_IOU = 0.4
    y.LOSS.CROWD_IOU = 0.7
    y.LOSS.NEGPOS_RATIO = 3.0
    y.LOSS.BOX_WEIGHT = 1.5
    y.LOSS.CLS_WEIGHT = 1.0
    y.LOSS.MASK_WEIGHT = 6.125
    y.LOSS.SEMSEG_WEIGHT = 1.0
    y.LOSS.MASKS_TO_TRAIN = 100
    y.LOSS.MASKIOU_WEIGHT = 25.0
    y.LOSS.MASKIOU_DISCARD_AREA = 25.0
    y.LOSS.CROP_PADDING = 1

    # YOLACT++ deformable ResNet (build_yolact_deform_resnet_backbone): the last N blocks of each
    # stage (res2..res5), every DEFORM_INTERVAL-th of them, get a DCNv2 3x3 (official dcn_layers).
    cfg.MODEL.RESNETS.DEFORM_NUM_LAST = [0, 4, 6, 3]
    cfg.MODEL.RESNETS.DEFORM_INTERVAL = 1
    # DarkNet-53 (build_yolact_darknet_backbone).
    cfg.MODEL.DARKNET = CN()
    cfg.MODEL.DARKNET.OUT_FEATURES = ["dark3", "dark4", "dark5"]
    cfg.MODEL.DARKNET.NORM = "FrozenBN"
    return cfg
