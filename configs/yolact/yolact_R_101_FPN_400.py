"""YOLACT ResNet-101-FPN at 400x400 (official yolact_im400): prior scales scaled by 400/550."""
from ..common.models.yolact import model, scaled_official_scales

model.backbone.bottom_up.depth = 101
model.input_size = 400
model.prior_generator.scales = scaled_official_scales(400)  # [[17], [34], [69], [139], [279]]
