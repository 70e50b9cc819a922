"""YOLACT inference: decode priors, confidence filter, NMS, full-image mask assembly -> Instances.

Follows the official `Detect` (layers/functions/detection.py) and `postprocess`
(layers/output_utils.py): crop at prototype resolution, then bilinear upsampling to the image,
then threshold; boxes scaled to pixels, sanitised (min/max, clamped) and truncated to integers.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from detectron2.structures import Boxes, Instances

from yolact_d2.layers import crop_masks, fast_nms, paste_masks

# Official box variances (center, size); equal to Box2BoxTransform(weights=(10, 10, 5, 5)).
VARIANCES = (0.1, 0.2)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """loc (..., P, 4) deltas + priors (P, 4) (cx, cy, w, h) -> (..., P, 4) relative XYXY.

    Own code rather than Box2BoxTransform: D2 clamps dw/dh at log(1000/16) (YOLACT does not), and
    the official x2 = x1 + w (not cx + w/2) rounds differently in float32.
    """
    centre = priors[..., :2] + loc[..., :2] * VARIANCES[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * VARIANCES[1])
    top_left = centre - size / 2
    return torch.cat([top_left, size + top_left], dim=-1)


def sanitize_coordinates(c1: torch.Tensor, c2: torch.Tensor, scale: float, limit: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Official sanitize_coordinates (no padding, no cast): relative -> pixels, ordered, clamped."""
    c1, c2 = c1 * scale, c2 * scale
    lo, hi = torch.minimum(c1, c2), torch.maximum(c1, c2)
    return lo.clamp(min=0), hi.clamp(max=limit)


class YolactPostProcessor:
    """Turns one image's head outputs into Detectron2 Instances at the original image size.

    Defaults are the official COCO evaluation settings (eval.py + yolact_base_config).

    Args:
        conf_thresh: priors whose best foreground score is <= this are dropped before NMS.
        nms_iou: IoU threshold of the NMS.
        top_k: candidates per class for Fast NMS (per image when class-agnostic).
        max_detections: detections kept per image.
        score_thresh: final detections need score > this (official `--score_threshold`, 0 = off).
        class_agnostic: official cross-class Fast NMS (each box competes once, with its best class).
        standard_nms: ordinary per-class NMS (torchvision batched_nms on every (class, prior) pair
            above conf_thresh) instead of Fast NMS, like official `--fast_nms=False`: its Cython
            NMS works on boxes in input pixels with the "+1" area convention, reproduced here by
            extending x2/y2 by one pixel (same IoU).
        crop: zero each mask outside its box at prototype resolution (official `--crop`).
        mask_threshold: full-image mask probability threshold (official 0.5, strict ">").
        integer_boxes: truncate pixel boxes to whole pixels like the official postprocess
            (`boxes.long()`); False keeps sub-pixel boxes.
        mask_chunk: masks are upsampled this many at a time to bound memory (results identical).
    """

    def __init__(
        self,
        conf_thresh: float = 0.05,
        nms_iou: float = 0.5,
        top_k: int = 200,
        max_detections: int = 100,
        score_thresh: float = 0.0,
        class_agnostic: bool = False,
        standard_nms: bool = False,
        crop: bool = True,
        mask_threshold: float = 0.5,
        integer_boxes: bool = True,
        mask_chunk: int = 32,
    ):
        if standard_nms and class_agnostic:
            raise ValueError(
                "YolactPostProcessor: class_agnostic=True works with Fast NMS only; "
                "set standard_nms=False (official cross-class NMS is a Fast NMS variant)."
            )
        self.conf_thresh = conf_thresh
        self.nms_iou = nms_iou
        self.top_k = top_k
        self.max_detections = max_detections
        self.score_thresh = score_thresh
        self.class_agnostic = class_agnostic
        self.standard_nms = standard_nms
        self.crop = crop
        self.mask_threshold = mask_threshold
        self.integer_boxes = integer_boxes
        self.mask_chunk = mask_chunk

    # ------------------------------------------------------------------ detection (Detect)
    def detect(self, boxes: torch.Tensor, conf: torch.Tensor, coef: torch.Tensor, input_size=(550, 550)):
        """boxes (P, 4) relative XYXY, conf (P, C+1) softmax probabilities, coef (P, K);
        input_size (H, W) of the network input (pixel scale of the standard NMS).

        Returns boxes (D, 4), classes (D,) 0-based, scores (D,), coef (D, K), sorted by score.
        """
        fg = conf[:, 1:].t()  # (C, P): background column dropped
        best, _ = fg.max(dim=0)  # (P,)
        keep = best > self.conf_thresh
        fg, boxes, coef = fg[:, keep], boxes[keep], coef[keep]
        if self.standard_nms:
            idx, classes, scores = self._standard_nms(boxes, fg, input_size)
        else:
            idx, classes, scores = fast_nms(
                boxes, fg, self.nms_iou, self.top_k, self.max_detections, self.class_agnostic
            )
        return boxes[idx], classes, scores, coef[idx]

    def _standard_nms(self, boxes: torch.Tensor, fg: torch.Tensor, input_size):
        cls_idx, prior_idx = torch.nonzero(fg > self.conf_thresh, as_tuple=True)
        scores = fg[cls_idx, prior_idx]
        h, w = float(input_size[0]), float(input_size[1])
        pixel = boxes[prior_idx].float() * boxes.new_tensor([w, h, w, h])
        pixel[:, 2:] += 1  # official Cython NMS: (x2 - x1 + 1) widths and intersections
        kept = batched_nms(pixel, scores.float(), cls_idx, self.nms_iou)
        kept = kept[torch.sort(scores[kept], descending=True, stable=True).indices][: self.max_detections]
        return prior_idx[kept], cls_idx[kept], scores[kept]

    # ------------------------------------------------------------------ postprocess
    def __call__(
        self,
        boxes: torch.Tensor,
        conf: torch.Tensor,
        coef: torch.Tensor,
        proto: torch.Tensor,
        valid_size: Tuple[int, int],
        input_size: Tuple[int, int],
        output_size: Tuple[int, int],
        mask_rescoring: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> Instances:
        """One image.

        Args:
            boxes: (P, 4) decoded relative XYXY (relative to the padded network input).
            conf: (P, C+1) class probabilities.
            coef: (P, K) mask coefficients.
            proto: (Hp, Wp, K) prototypes of this image (channel-last).
            valid_size: (h, w) of the resized image inside the network input (before padding).
            input_size: (H, W) of the network input (after padding).
            output_size: (height, width) of the original image.
            mask_rescoring: YOLACT++ hook: cropped masks (D, 1, Hp, Wp) -> predicted IoU (D, C).
                `scores` stay the class scores (boxes are ranked and reported with them, as the
                official rescore_bbox=False) and `mask_scores` = class score x IoU of its class.
        """
        height, width = int(output_size[0]), int(output_size[1])
        boxes, classes, scores, coef = self.detect(boxes, conf, coef, input_size)
        if self.score_thresh > 0:
            keep = scores > self.score_thresh
            boxes, classes, scores, coef = boxes[keep], classes[keep], scores[keep], coef[keep]

        masks = torch.sigmoid(proto @ coef.t()).permute(2, 0, 1)  # (D, Hp, Wp)
        if self.crop:
            masks = crop_masks(masks.contiguous(), boxes)
        mask_scores = None
        if mask_rescoring is not None:
            # Official YOLACT++ (rescore_mask=True, rescore_bbox=False): boxes keep the class score
            # (and its NMS ranking); only the mask result is scored class score x predicted IoU.
            mask_scores = scores.clone()
            if masks.shape[0] > 0:
                iou = mask_rescoring(masks.unsqueeze(1))  # (D, C)
                mask_scores = scores * torch.gather(iou, 1, classes.unsqueeze(1)).squeeze(1)
        full = self._paste_masks(masks, valid_size, input_size, (height, width))

        squashed = tuple(valid_size) == tuple(input_size)
        # Squash mode: relative coordinates times the original size, exactly as official.
        sx = float(width) if squashed else input_size[1] * width / valid_size[1]
        sy = float(height) if squashed else input_size[0] * height / valid_size[0]
        x1, x2 = sanitize_coordinates(boxes[:, 0], boxes[:, 2], sx, width)
        y1, y2 = sanitize_coordinates(boxes[:, 1], boxes[:, 3], sy, height)
        pixel_boxes = torch.stack([x1, y1, x2, y2], dim=1)
        if self.integer_boxes:
            pixel_boxes = pixel_boxes.floor()  # == official .long(): coordinates are >= 0 here

        result = Instances((height, width))
        result.pred_boxes = Boxes(pixel_boxes.float())
        result.scores = scores.float()
        result.pred_classes = classes.long()
        result.pred_masks = full
        if mask_scores is not None:
            result.mask_scores = mask_scores.float()  # (D,) segm score; YolactCOCOEvaluator reads it
        return result

    def _paste_masks(self, masks, valid_size, input_size, output_size) -> torch.Tensor:
        """(D, Hp, Wp) probabilities -> (D, height, width) bool, bilinear, align_corners=False."""
        height, width = output_size
        squashed = tuple(valid_size) == tuple(input_size)
        if squashed and masks.device.type == "cpu" and masks.shape[0] > 0 and self.mask_threshold >= 0:
            return paste_masks(masks.float(), (height, width), self.mask_threshold)
        out = torch.zeros((masks.shape[0], height, width), dtype=torch.bool, device=masks.device)
        for start in range(0, masks.shape[0], self.mask_chunk):
            m = masks[start : start + self.mask_chunk].unsqueeze(0)  # (1, d, Hp, Wp)
            if not squashed:
                # Padded input: go to input resolution, cut the padding off, then to the image.
                m = F.interpolate(m, size=tuple(input_size), mode="bilinear", align_corners=False)
                m = m[:, :, : valid_size[0], : valid_size[1]]
            m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
            out[start : start + self.mask_chunk] = m[0] > self.mask_threshold
        return out
