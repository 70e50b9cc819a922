"""Every model config of the modeling part builds and runs inference on CPU at its real input size."""
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# config -> (network input, FPN sizes, prior count)
CONFIGS = {
    "yolact_R_50_FPN_550.py": (550, [69, 35, 18, 9, 5], 19248),
    "yolact_R_101_FPN_550.py": (550, [69, 35, 18, 9, 5], 19248),
    "yolact_R_101_FPN_400.py": (400, [50, 25, 13, 7, 4], 10077),
    "yolact_R_101_FPN_700.py": (700, [88, 44, 22, 11, 6], 30963),
    "yolact_d2R_50_FPN_550.py": (550, [69, 35, 18, 9, 5], 19248),
    "yolact_regnety_4gf_FPN_550.py": (550, [69, 35, 18, 9, 5], 19248),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_builds_and_runs(name):
    size, fpn_sizes, num_priors = CONFIGS[name]
    cfg = LazyConfig.load(os.path.join(REPO, "configs", "yolact", name))
    assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg.keys())
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    assert model.input_size == size
    image = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 120, "width": 180}])
    # one prior set was made, keyed by the FPN sizes and input size it saw
    ((feature_sizes, input_size, _), priors), = model.prior_generator._cache.items()
    assert [w for _, w in feature_sizes] == fpn_sizes and input_size == (size, size)
    assert priors.shape == (num_priors, 4)
    inst = out[0]["instances"]
    assert inst.image_size == (120, 180) and inst.pred_masks.shape[1:] == (120, 180)
    assert len(inst) <= 100
