"""Draw a trained model's predictions on validation images (Detectron2's Visualizer), next to the
ground truth, into a folder.

    python tools/visualize_predictions.py --config-file configs/shapes/yolact_shapes.py \
        --output output/shapes_predictions --num-images 12

Weights default to the last checkpoint of the config's train.output_dir; the images come from the
config's test dataset (dataloader.test.dataset.names). Each output PNG is ground truth (left) and
predictions above --score-thresh (right).
"""
import argparse
import logging
import os
import sys


import numpy as np  # noqa: E402
import torch  # noqa: E402

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.visualizer import ColorMode, Visualizer  # noqa: E402

import yolact_d2  # noqa: E402,F401
from yolact_d2.engine import YolactCheckpointer, apply_overrides  # noqa: E402

logger = logging.getLogger("yolact_d2.visualize")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default="", help="checkpoint (default: last checkpoint in train.output_dir)")
    p.add_argument("--dataset", default="", help="registered dataset (default: the config's test dataset)")
    p.add_argument("--output", default="output/predictions", help="folder for the PNGs")
    p.add_argument("--num-images", type=int, default=12)
    p.add_argument("--score-thresh", type=float, default=0.3)
    p.add_argument("--scale", type=float, default=3.0, help="drawing scale (the shapes images are small)")
    p.add_argument("opts", nargs="*", help="key=value config overrides")
    return p.parse_intermixed_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="yolact_d2")
    cfg = apply_overrides(LazyConfig.load(args.config_file), args.opts)
    if cfg.train.get("num_threads"):
        torch.set_num_threads(int(cfg.train.num_threads))
    device = cfg.train.get("device", "cpu") if torch.cuda.is_available() else "cpu"
    model = instantiate(cfg.model).to(device).eval()
    checkpointer = YolactCheckpointer(model, cfg.train.output_dir, strict=True)  # weights must fit exactly
    weights = args.weights
    if not weights:
        if not checkpointer.has_checkpoint():
            raise SystemExit(f"No --weights given and no checkpoint in {cfg.train.output_dir}: train first.")
        weights = checkpointer.get_checkpoint_file()
    checkpointer.load(weights)

    names = args.dataset or cfg.dataloader.test.dataset.names
    name = names if isinstance(names, str) else names[0]
    dicts = DatasetCatalog.get(name)[: args.num_images]
    metadata = MetadataCatalog.get(name)
    os.makedirs(args.output, exist_ok=True)
    for d in dicts:
        bgr = read_image(d["file_name"], format="BGR")
        image = torch.as_tensor(np.ascontiguousarray(bgr.transpose(2, 0, 1)))
        with torch.no_grad():
            inst = model([{"image": image, "height": bgr.shape[0], "width": bgr.shape[1]}])[0]["instances"]
        inst = inst[inst.scores >= args.score_thresh].to("cpu")
        rgb = bgr[:, :, ::-1]
        gt = Visualizer(rgb, metadata, scale=args.scale, instance_mode=ColorMode.IMAGE).draw_dataset_dict(d).get_image()
        pred = Visualizer(rgb, metadata, scale=args.scale, instance_mode=ColorMode.IMAGE).draw_instance_predictions(inst).get_image()
        gap = np.full((gt.shape[0], 8, 3), 255, dtype=np.uint8)
        out = os.path.join(args.output, f"{os.path.splitext(os.path.basename(d['file_name']))[0]}.png")
        import cv2

        cv2.imwrite(out, np.concatenate([gt, gap, pred], axis=1)[:, :, ::-1])
        logger.info(f"{out}: {len(inst)} predictions >= {args.score_thresh}")
    logger.info(f"Wrote {len(dicts)} images (ground truth | predictions) to {args.output}")


if __name__ == "__main__":
    main()
