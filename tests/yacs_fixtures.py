"""yacs configs for the tests: a configs/yacs file, and a tiny YOLACT on a tiny shapes set."""
import math
from pathlib import Path

from detectron2.config import get_cfg

import yolact_d2

REPO = Path(__file__).resolve().parents[1]


def yacs_cfg(name, opts=()):
    """get_cfg() + add_yolact_config + configs/yacs/<name>.yaml, on the CPU, then `opts`."""
    cfg = get_cfg()
    yolact_d2.add_yolact_config(cfg)
    cfg.merge_from_file(str(REPO / "configs/yacs" / f"{name}.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def tiny_shapes_cfg(tmp_path, prefix, num_train=4, opts=()):
    """A ResNet-18 YOLACT with a 16-wide FPN at 64 px, 4 classes, on a generated 64 px shapes set
    registered as <prefix>_train / <prefix>_val; training settings for a few CPU iterations."""
    from yolact_d2.data.shapes import prepare_shapes

    prepare_shapes(str(tmp_path / "shapes"), prefix=prefix, num_train=num_train, num_val=2, image_size=64,
                   seed=0, max_objects=3)
    scales = [[float(s), s * math.sqrt(2)] for s in (8, 16, 32, 64, 128)]
    return yacs_cfg("yolact_R_50_FPN_550", [
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.NORM", "BN",
        "MODEL.YOLACT.NUM_CLASSES", 4, "MODEL.YOLACT.NUM_PROTOTYPES", 8, "MODEL.YOLACT.INPUT_SIZE", 64,
        "MODEL.YOLACT.TO_RGB", False, "MODEL.YOLACT.FPN.OUT_CHANNELS", 16,
        "MODEL.YOLACT.PROTONET.CONV_DIMS", 16,
        "MODEL.YOLACT.ANCHOR.SCALES", scales, "MODEL.YOLACT.ANCHOR.SQUARE_ANCHORS", False,
        "DATASETS.TRAIN", (f"{prefix}_train",), "DATASETS.TEST", (),
        "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64, "DATALOADER.NUM_WORKERS", 0,
        "SOLVER.IMS_PER_BATCH", num_train, "SOLVER.BASE_LR", 0.01, "SOLVER.STEPS", (),
        "SOLVER.WARMUP_ITERS", 0, "SOLVER.CHECKPOINT_PERIOD", 1000, "SEED", 0,
        "OUTPUT_DIR", str(tmp_path / "out"), *opts,
    ])
