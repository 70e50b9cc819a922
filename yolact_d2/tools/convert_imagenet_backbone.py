"""Convert ImageNet classification weights into a backbone-only checkpoint for train.init_checkpoint.

    python tools/convert_imagenet_backbone.py resnet50-0676ba61.pth r50_imagenet.pth
    python tools/train_net.py --config-file configs/yolact/yolact_R_50_FPN_550.py train.init_checkpoint=r50_imagenet.pth

Inputs: torchvision's ResNet files (resnet50-0676ba61.pth, resnet101-63fe2227.pth; also official
YOLACT's resnet50-19c8e357.pth and resnet101_reducedfc.pth, which are torchvision files) and
official YOLACT's darknet53.pth. The backbone is read from the file's keys; the model comes from
--config (default: configs/yolact/yolact_R_50_FPN_550.py, _R_101_ or _D_53_ to match), whose
`backbone.bottom_up.*` keys the conversion must fill exactly (a YOLACT++ config works too: its
deformable offset convs start from zero). Everything else (FPN, protonet, head) trains from its
initialisation, which train_net.py logs as a grouped summary. Files are read without running code
from them (yolact_d2.checkpoint.safe_load).
"""
import argparse
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="ImageNet weights (torchvision ResNet .pth or official darknet53.pth)")
    parser.add_argument("output", help="where to write the backbone-only checkpoint")
    parser.add_argument("--config", default=None, help="LazyConfig of the model it initialises (default: from the file)")
    args = parser.parse_args(argv)

    from detectron2.config import LazyConfig, instantiate

    from yolact_d2.checkpoint import ConversionError, load_official_checkpoint
    from yolact_d2.checkpoint.imagenet import convert_imagenet_backbone, default_config_for_imagenet, detect_imagenet_backbone
    from yolact_d2.model_zoo import ConfigNotFoundError, resolve_config_file

    try:
        state = load_official_checkpoint(args.input)  # the safe reader; {"model": sd} or a plain sd
        info = detect_imagenet_backbone(state)
        config = args.config
        if config is None:
            default = default_config_for_imagenet(info)
            if default is None:
                raise ConversionError(f"no default config for a {info}: pass --config of the model it initialises.")
            config = default
        config = resolve_config_file(config)  # a file, or a model-zoo name (also when installed)
        model = instantiate(LazyConfig.load(config).model)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        converted, summary, info = convert_imagenet_backbone(state, shapes)
    except (ConversionError, ConfigNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": converted, "yolact_d2_source": os.path.basename(args.input)}, args.output)
    name = "DarkNet-53" if info["backbone"] == "darknet53" else f"ResNet-{info['depth']}"
    print(f"input:   {args.input} ({len(state)} keys): ImageNet {name}")
    print(f"config:  {os.path.relpath(config, REPO) if config.startswith(REPO) else config}")
    print(f"result:  {summary}; backbone only (FPN, protonet and head start from their initialisation)")
    print(f"output:  {args.output}; train with train.init_checkpoint={args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
