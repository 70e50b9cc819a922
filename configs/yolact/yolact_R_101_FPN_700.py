"""YOLACT ResNet-101-FPN at 700x700 (official yolact_im700): prior scales scaled by 700/550."""
from ..common.models.yolact import model, scaled_official_scales

model.backbone.bottom_up.depth = 101
model.input_size = 700
model.prior_generator.scales = scaled_official_scales(700)  # [[30], [61], [122], [244], [488]]
model.criterion.masks_to_train = 300  # official yolact_im700
