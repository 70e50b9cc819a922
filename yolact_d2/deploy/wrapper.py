"""A Yolact model as one tensor-in, tensors-out module: the graph that ONNX / TorchScript /
torch.export record, with the resize, Fast NMS and mask assembly inside.

Why a separate module: `Yolact.inference` takes dicts, filters priors by confidence (a
data-dependent shape), loops over images and returns Instances. Exporters need fixed-rank tensors
and a batch dimension that can vary, so here every step keeps all priors and uses masks:

* priors below the confidence threshold get score -1 instead of being dropped; per class the
  top_k candidates are taken with topk (invalid ones sort last, so they never suppress a valid
  one) and removed again after the Fast NMS test;
* the merge over classes takes the best `max_detections` (class, candidate) pairs of each image;
  images with fewer detections are padded (score 0, class -1, empty mask) and `num_detections`
  says how many rows are real.

This is exactly the detection set of `YolactPostProcessor` (per-class Fast NMS, official
semantics), up to the order of exactly equal scores.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from yolact_d2.layers.ops import box_iou_matrix, crop_masks_pytorch
from yolact_d2.modeling.inference import decode_boxes

__all__ = ["YolactExportWrapper", "OUTPUT_NAMES"]

OUTPUT_NAMES = ("boxes", "scores", "classes", "masks", "num_detections")


class YolactExportWrapper(nn.Module):
    """images (B, 3, H, W) uint8, in the model's input_format, any size (all images of a batch
    share it) -> (boxes (B, D, 4) float pixels XYXY, scores (B, D), classes (B, D) int64 (-1 =
    padding), masks (B, D, H, W) bool, num_detections (B,) int64), D = max_detections.

    Supports the official settings: resize_mode "squash", per-class Fast NMS, crop. YOLACT++
    (mask re-scoring and deformable convs), class-agnostic and standard NMS raise.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        pp = model.post_processor
        problems = []
        if model.resize_mode != "squash":
            problems.append(f"resize_mode={model.resize_mode!r} (only 'squash', the official resize, is exportable)")
        if getattr(model, "mask_rescoring", None) is not None:
            problems.append("YOLACT++ mask re-scoring")
        if pp.class_agnostic:
            problems.append("class_agnostic=True")
        if pp.standard_nms:
            problems.append("standard_nms=True")
        if problems:
            raise NotImplementedError(
                "YolactExportWrapper: cannot export " + ", ".join(problems) + "; export a YOLACT (v1) "
                "config with the default post-processing, or use the Python Predictor."
            )
        self.model = model
        self.input_size = int(model.input_size)
        self.to_rgb = bool(model.to_rgb)
        self.conf_thresh = float(pp.conf_thresh)
        self.nms_iou = float(pp.nms_iou)
        self.top_k = int(pp.top_k)
        self.max_detections = int(pp.max_detections)
        self.score_thresh = float(pp.score_thresh)
        self.crop = bool(pp.crop)
        self.mask_threshold = float(pp.mask_threshold)
        self.integer_boxes = bool(pp.integer_boxes)
        # Priors depend only on the (fixed) network input size: computed once, stored as a constant.
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.input_size, self.input_size, device=model.device)
            feats = model.backbone(probe)
            sizes = [tuple(feats[f].shape[-2:]) for f in model.head_features]
            priors = model.prior_generator(sizes, (self.input_size, self.input_size), model.device)
        self.register_buffer("priors", priors.clone(), persistent=False)  # (P, 4)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Same maths as Yolact._normalize (official FastBaseTransform), batched."""
        x = images.float()
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = (x - self.model.pixel_mean) / self.model.pixel_std
        if self.to_rgb:
            x = x[:, [2, 1, 0]]
        return x

    def _fast_nms(self, boxes: torch.Tensor, conf: torch.Tensor):
        """boxes (B, P, 4) relative, conf (B, P, C+1) -> scores (B, D), prior index (B, D), class (B, D)."""
        fg = conf[:, :, 1:]  # (B, P, C)
        num_priors, num_classes = fg.shape[1], fg.shape[2]
        valid = fg.max(dim=2).values > self.conf_thresh  # (B, P): the official confidence pre-filter
        scores = torch.where(valid.unsqueeze(2), fg, torch.full_like(fg, -1.0)).transpose(1, 2)  # (B, C, P)
        k = min(self.top_k, num_priors)
        top_scores, top_idx = scores.topk(k, dim=2)  # (B, C, K), descending
        cand = torch.gather(
            boxes.unsqueeze(1).expand(-1, num_classes, -1, -1), 2, top_idx.unsqueeze(3).expand(-1, -1, -1, 4)
        )  # (B, C, K, 4)
        iou = torch.triu(box_iou_matrix(cand, cand), diagonal=1)  # (B, C, K, K): pairs i < j only
        keep = (iou.max(dim=2).values <= self.nms_iou) & (top_scores > -0.5)
        if self.score_thresh > 0:
            keep = keep & (top_scores > self.score_thresh)
        flat = torch.where(keep, top_scores, torch.full_like(top_scores, -1.0)).flatten(1)  # (B, C*K) class-major
        d = min(self.max_detections, flat.shape[1])
        det_scores, pick = flat.topk(d, dim=1)  # (B, D)
        det_prior = torch.gather(top_idx.flatten(1), 1, pick)
        det_class = torch.div(pick, k, rounding_mode="floor")
        return det_scores, det_prior, det_class

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        height, width = images.shape[-2], images.shape[-1]
        m = self.model
        x = self._normalize(images)
        feats = m.backbone(x)
        proto = m.protonet(feats[m.proto_feature]).permute(0, 2, 3, 1)  # (B, Hp, Wp, K)
        preds = m.head([feats[f] for f in m.head_features])
        conf = F.softmax(preds["conf"], dim=-1)  # (B, P, C+1)
        boxes = decode_boxes(preds["loc"], self.priors)  # (B, P, 4) relative XYXY

        det_scores, det_prior, det_class = self._fast_nms(boxes, conf)
        real = det_scores > -0.5  # (B, D)
        det_boxes = torch.gather(boxes, 1, det_prior.unsqueeze(2).expand(-1, -1, 4))  # (B, D, 4)
        coef = preds["coef"]
        det_coef = torch.gather(coef, 1, det_prior.unsqueeze(2).expand(-1, -1, coef.shape[2]))  # (B, D, K)

        bsz, hp, wp, nk = proto.shape
        lin = torch.matmul(proto.reshape(bsz, hp * wp, nk), det_coef.transpose(1, 2))  # (B, Hp*Wp, D)
        masks = torch.sigmoid(lin).transpose(1, 2).reshape(bsz, -1, hp, wp)  # (B, D, Hp, Wp)
        if self.crop:
            masks = crop_masks_pytorch(masks.reshape(-1, hp, wp), det_boxes.reshape(-1, 4)).reshape(bsz, -1, hp, wp)
        masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
        masks = (masks > self.mask_threshold) & real[:, :, None, None]  # (B, D, H, W)

        # Official sanitize_coordinates: relative -> pixels (squash: times the image size), ordered, clamped.
        w = torch.zeros((), dtype=det_boxes.dtype, device=det_boxes.device) + width
        h = torch.zeros((), dtype=det_boxes.dtype, device=det_boxes.device) + height
        x1, x2 = det_boxes[..., 0] * w, det_boxes[..., 2] * w
        y1, y2 = det_boxes[..., 1] * h, det_boxes[..., 3] * h
        x1, x2 = torch.minimum(x1, x2).clamp(min=0), torch.minimum(torch.maximum(x1, x2), w)
        y1, y2 = torch.minimum(y1, y2).clamp(min=0), torch.minimum(torch.maximum(y1, y2), h)
        pixel_boxes = torch.stack([x1, y1, x2, y2], dim=2)
        if self.integer_boxes:
            pixel_boxes = pixel_boxes.floor()
        pixel_boxes = pixel_boxes * real.unsqueeze(2)
        scores = torch.where(real, det_scores, torch.zeros_like(det_scores))
        classes = torch.where(real, det_class, torch.full_like(det_class, -1))
        return pixel_boxes, scores, classes, masks, real.sum(dim=1)
