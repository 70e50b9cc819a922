"""Seeded YOLACT weights and images for the inference tests (predictor, demo, export, benchmark).

No downloads: the R50 model of the repository config gets seeded random weights, non-trivial
frozen batch-norm statistics (so folding them is really exercised) and class-logit biases that
give a few confident detections.
"""
import os

import cv2
import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50_CONFIG = os.path.join(REPO, "configs", "yolact", "yolact_R_50_FPN_550.py")
SMALL_INPUT = 160  # network input side for fast tests (priors follow the input size)
SMALL_OPTS = [f"model.input_size={SMALL_INPUT}"]
LOGIT_WEIGHT_SCALE = 0.05


def build_model(opts=SMALL_OPTS, num_classes=None, config=R50_CONFIG):
    from detectron2.config import LazyConfig, instantiate

    from yolact_d2.modeling import set_num_classes

    cfg = LazyConfig.apply_overrides(LazyConfig.load(config), list(opts))
    if num_classes is not None:
        set_num_classes(cfg.model, num_classes)
    return instantiate(cfg.model).eval()


@torch.no_grad()
def seeded_state_dict(seed=0, num_classes=None, confident_classes=(0, 2, 17), config=R50_CONFIG, opts=SMALL_OPTS):
    """State dict of the model (default R50): seeded weights, random BN stats, biased class logits."""
    torch.manual_seed(seed)
    model = build_model(opts, num_classes=num_classes, config=config)
    g = torch.Generator().manual_seed(seed)
    for name, buf in list(model.named_buffers()) + list(model.named_parameters()):
        if ".norm." not in name:
            continue
        if name.endswith("running_var"):
            buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
        elif name.endswith("running_mean"):
            buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
        elif name.endswith("weight"):
            buf.copy_(0.8 + 0.4 * torch.rand(buf.shape, generator=g))
        elif name.endswith("bias"):
            buf.copy_(0.05 * torch.randn(buf.shape, generator=g))
    head = model.head
    c1 = head.num_classes + 1
    bias = head.cls_score.bias.view(head.num_anchors, c1)
    bias.fill_(-3.0)
    bias[:, 0] = 0.0  # background
    for c in confident_classes:
        if c < head.num_classes:
            bias[:, c + 1] = 1.5 + 0.5 * c / max(confident_classes)
    head.cls_score.weight.mul_(LOGIT_WEIGHT_SCALE)  # logits = bias + a small prior-dependent spread
    return model.state_dict()


def write_checkpoint(path, seed=0, num_classes=None, config=R50_CONFIG, opts=SMALL_OPTS):
    torch.save({"model": seeded_state_dict(seed, num_classes, config=config, opts=opts)}, path)
    return path


def test_image(height=120, width=160, seed=0):
    """A seeded BGR uint8 image with filled shapes."""
    rng = np.random.RandomState(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = (90, 110, 130)
    for _ in range(6):
        color = tuple(int(c) for c in rng.randint(0, 255, size=3))
        x, y = int(rng.randint(0, width)), int(rng.randint(0, height))
        r = int(rng.randint(8, min(height, width) // 3))
        cv2.circle(img, (x, y), r, color, -1)
    return img
