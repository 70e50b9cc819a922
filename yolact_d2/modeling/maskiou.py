"""YOLACT++ fast mask re-scoring: a small conv net predicts each mask's IoU with its object.

Official ``FastMaskIoUNet`` (yolact.py, config ``maskiou_net``): input is the cropped,
sigmoid'ed mask at prototype resolution (not binarised), ``(N, 1, Hp, Wp)``; five 3x3 stride-2
convs without padding (8, 16, 32, 64, 128 channels) and a 1x1 conv to one output per class,
each followed by ReLU, then a global max pool -> ``(N, num_classes)``. At test time the
detection's score is multiplied by the predicted IoU of its own class.
"""
from typing import Sequence

import torch
from torch import nn

__all__ = ["FastMaskIoUNet", "min_mask_size"]


def min_mask_size(num_convs: int, kernel_size: int = 3, stride: int = 2) -> int:
    """Smallest mask side the stride-2, unpadded conv stack accepts (63 for the official 5)."""
    size = 1
    for _ in range(num_convs):
        size = (size - 1) * stride + kernel_size
    return size


class FastMaskIoUNet(nn.Module):
    """masks (N, 1, H, W) in [0, 1] -> predicted mask IoU per class (N, num_classes).

    Args:
        num_classes: foreground classes (80 for COCO; the official net has num_classes - 1
            outputs counting background, i.e. the same number).
        channels: widths of the 3x3 stride-2 convs (official (8, 16, 32, 64, 128)).
    """

    def __init__(self, num_classes: int, channels: Sequence[int] = (8, 16, 32, 64, 128)):
        super().__init__()
        self.num_classes = num_classes
        layers = []
        cin = 1
        for cout in channels:
            layers += [nn.Conv2d(cin, cout, 3, stride=2), nn.ReLU(inplace=True)]
            cin = cout
        # The official net keeps a ReLU after the class layer too (include_last_relu=True).
        layers += [nn.Conv2d(cin, num_classes, 1), nn.ReLU(inplace=True)]
        # Sequential indices 0, 2, ..., 10 mirror the official `maskiou_net.maskiou_net.{i}` keys.
        self.convs = nn.Sequential(*layers)
        self._min_size = min_mask_size(len(channels))

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.dim() != 4 or masks.shape[1] != 1:
            raise ValueError(f"FastMaskIoUNet expects masks of shape (N, 1, H, W), got {tuple(masks.shape)}")
        if min(masks.shape[-2:]) < self._min_size:
            raise ValueError(
                f"FastMaskIoUNet: masks of {tuple(masks.shape[-2:])} are smaller than the "
                f"{self._min_size}x{self._min_size} its unpadded stride-2 convs need; use a larger "
                f"input size (prototypes are 1/4 of the input, e.g. 138 at 550)."
            )
        if masks.shape[0] == 0:
            return masks.new_zeros((0, self.num_classes))
        x = self.convs(masks)  # (N, num_classes, h, w)
        return x.amax(dim=(2, 3))  # global max pool -> (N, num_classes)

    def predict_class_iou(self, masks: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """masks (N, H, W), classes (N,) 0-based -> predicted IoU of each mask's class (N,)."""
        iou = self(masks.unsqueeze(1))  # (N, num_classes)
        return torch.gather(iou, 1, classes.view(-1, 1).long()).squeeze(1)

    def rescore(self, scores: torch.Tensor, masks: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Official YOLACT++ re-scoring: class score x predicted IoU of that class, (N,)."""
        return scores * self.predict_class_iou(masks, classes)
