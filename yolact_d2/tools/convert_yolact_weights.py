"""Convert an official YOLACT (github dbolya/yolact) or YolactEdge (github haotian-liu/yolact_edge)
checkpoint into a yolact_d2 checkpoint.

    python tools/convert_yolact_weights.py yolact_base_54_800000.pth yolact_R_101_FPN_550.pth
    python tools/convert_yolact_weights.py yolact_edge_vid_847_50000.pth yolact_edge_vid_R_101_FPN_550.pth
    python tools/convert_yolact_weights.py in.pth out.pth --config configs/yolact/yolact_R_101_FPN_400.py

An ImageNet ResNet in torchvision's layout (official YOLACT's backbone initialisation, e.g.
resnet50-19c8e357.pth / resnet101_reducedfc.pth) converts to a backbone-only checkpoint for
`train.init_checkpoint` (pass --config of the matching depth):

    python tools/convert_yolact_weights.py resnet101_reducedfc.pth r101_imagenet.pth \
        --config configs/yolact/yolact_R_101_FPN_550.py

The variant (ResNet-50/101, DarkNet-53, YOLACT++; YolactEdge image or video, ResNet or MobileNetV2;
from keys such as fpn_phase_1, flow_net, spa) and class count are read from the checkpoint;
the matching config (or --config) builds the model whose keys and shapes the conversion must fill
exactly. Any unmapped, missing or extra key or wrong shape stops with a message. The output loads
with `DetectionCheckpointer(model).load(path)`.
"""
import argparse
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="official YOLACT .pth (a plain state dict)")
    parser.add_argument("output", help="where to write the yolact_d2 checkpoint")
    parser.add_argument("--config", default=None, help="LazyConfig of the model (default: from the checkpoint)")
    args = parser.parse_args(argv)

    from detectron2.config import LazyConfig, instantiate

    from yolact_d2.checkpoint import (
        ConversionError,
        convert_official_state_dict,
        default_config_for,
        detect_variant,
        is_torchvision_resnet,
        load_official_checkpoint,
    )
    from yolact_d2.checkpoint.imagenet import convert_imagenet_backbone
    from yolact_d2.model_zoo import ConfigNotFoundError, resolve_config_file
    from yolact_d2.modeling import set_num_classes

    try:
        start = time.perf_counter()
        official = load_official_checkpoint(args.input)
        backbone_only = is_torchvision_resnet(official)
        if backbone_only:
            if args.config is None:
                raise ConversionError(
                    "this is an ImageNet ResNet (torchvision layout): pass --config of the model it "
                    "initialises (e.g. configs/yolact/yolact_R_101_FPN_550.py)."
                )
            info = {"plus": False, "backbone": "ImageNet resnet (backbone only)", "num_anchors": "-", "num_classes": "-"}
        else:
            info = detect_variant(official)
        try:  # a file, or a model-zoo name (the checkout's configs/ or the installed copy)
            config = resolve_config_file(args.config or default_config_for(info))
        except ConfigNotFoundError as e:
            raise ConversionError(f"{e} Pass --config for this checkpoint.") from None
        cfg = LazyConfig.load(config)
        if not backbone_only and cfg.model.num_classes != info["num_classes"]:
            print(f"note: checkpoint has {info['num_classes']} classes, config {cfg.model.num_classes}: using the checkpoint's")
            set_num_classes(cfg.model, info["num_classes"])
        model = instantiate(cfg.model)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if backbone_only:  # the ImageNet tool's conversion: strict within the bottom-up network
            converted, summary, _ = convert_imagenet_backbone(official, expected)
        else:
            converted, summary = convert_official_state_dict(official, expected)
            model.load_state_dict(converted, strict=True)  # belt and braces: exactly our keys
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": converted, "yolact_d2_source": os.path.basename(args.input)}, args.output)
    print(f"input:   {args.input} ({len(official)} keys)")
    if backbone_only:
        print("variant: ImageNet ResNet (torchvision layout) -> backbone only, for train.init_checkpoint")
    else:
        backbone = info["backbone"] + (f"-{info['depth']}" if "depth" in info else "")
        family = "YOLACT++" if info["plus"] else "YOLACT"
        if info.get("edge"):
            family = "YolactEdge video" if info.get("video") else "YolactEdge"
        print(f"variant: {family} {backbone}, {info['num_classes']} classes, "
              f"{info['num_anchors']} priors per location")
    print(f"config:  {os.path.relpath(config, REPO) if config.startswith(REPO) else config}")
    print(f"result:  {summary}")
    print(f"output:  {args.output} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
