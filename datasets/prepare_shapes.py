#!/usr/bin/env python
"""Generate the synthetic shapes dataset (COCO json + PNG images) used by configs/shapes/.

    python datasets/prepare_shapes.py                      # -> $DETECTRON2_DATASETS/shapes
                                                           #    (unset: ~/.cache/yolact_d2/datasets/shapes)
    python datasets/prepare_shapes.py --root /tmp/shapes --num-train 2000 --image-size 160

Idempotent (nothing is rewritten when the folder holds the same parameters) and atomic.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from yolact_d2.data.shapes import ALL_KINDS, DEFAULT_KINDS, generate_shapes_dataset, shapes_default_root  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=shapes_default_root(), help="output folder (default: %(default)s)")
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--image-size", type=int, default=128, help="square image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS), choices=ALL_KINDS,
                   help="shape kinds, one class each")
    p.add_argument("--min-objects", type=int, default=1)
    p.add_argument("--max-objects", type=int, default=4)
    p.add_argument("--crowd-prob", type=float, default=0.05, help="share of train images with a crowd region")
    p.add_argument("--image-ext", choices=("png", "jpg"), default="png")
    args = p.parse_args(argv)
    t0 = time.time()
    paths = generate_shapes_dataset(
        args.root, args.num_train, args.num_val, args.image_size, args.seed, kinds=tuple(args.kinds),
        min_objects=args.min_objects, max_objects=args.max_objects, crowd_prob=args.crowd_prob,
        image_ext=args.image_ext)
    for split, (json_file, image_root) in paths.items():
        print(f"{split}: {json_file}  images: {image_root}")
    print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
