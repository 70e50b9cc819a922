"""YOLACT's shared prediction head (official `PredictionModule` with `share_prediction_module`)."""
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn


class YolactHead(nn.Module):
    """One set of weights applied to every FPN level: a 3x3 conv + ReLU ("upfeature"), then
    3x3 convs for box deltas, class logits (with background) and mask coefficients (tanh).

    Args:
        in_channels: FPN width (256).
        num_classes: foreground classes C; the class branch predicts C + 1 (index 0 = background).
        num_anchors: priors per location A (official v1: 3; YOLACT++: 9).
        num_prototypes: K mask coefficients per prior (32).
        num_extra_convs: convs in the shared "upfeature" tower (official `extra_head_net`: 1).
    """

    def __init__(
        self,
        in_channels: int = 256,
        num_classes: int = 80,
        num_anchors: int = 3,
        num_prototypes: int = 32,
        num_extra_convs: int = 1,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.num_prototypes = num_prototypes
        self.upfeature = nn.ModuleList(
            [nn.Conv2d(in_channels, in_channels, 3, padding=1) for _ in range(num_extra_convs)]
        )
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.cls_score = nn.Conv2d(in_channels, num_anchors * (num_classes + 1), 3, padding=1)
        self.coef_pred = nn.Conv2d(in_channels, num_anchors * num_prototypes, 3, padding=1)

    @staticmethod
    def _flatten(x: torch.Tensor, last: int) -> torch.Tensor:
        # (B, A*last, H, W) -> (B, H*W*A, last): location-major, anchor-minor, like the priors.
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, last)

    def forward(self, features: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """features: FPN maps P3..P7. Returns loc (B, P, 4), conf (B, P, C+1), coef (B, P, K)."""
        locs, confs, coefs = [], [], []
        for x in features:
            for conv in self.upfeature:
                x = F.relu(conv(x), inplace=True)
            locs.append(self._flatten(self.bbox_pred(x), 4))
            confs.append(self._flatten(self.cls_score(x), self.num_classes + 1))
            coefs.append(self._flatten(self.coef_pred(x), self.num_prototypes))
        return {
            "loc": torch.cat(locs, dim=1),
            "conf": torch.cat(confs, dim=1),
            "coef": torch.tanh(torch.cat(coefs, dim=1)),
        }
