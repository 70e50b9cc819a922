"""A Yolact model as one tensor-in, tensors-out module: the graph that ONNX / TorchScript /
torch.export record, with the resize, NMS and mask assembly inside.

Why a separate module: `Yolact.inference` takes dicts, filters priors by confidence (a
data-dependent shape), loops over images and returns Instances. Exporters need fixed-rank tensors
and a batch dimension that can vary, so here every step keeps all priors and uses masks:

* priors below the confidence threshold get score -1 instead of being dropped; the top_k
  candidates (per class, or per image when class-agnostic) are taken sorted, equal scores by lower
  index as the eager Fast NMS (`top_sorted`: ONNX TopK's own tie rule; invalid ones sort last,
  so they never suppress a valid one) and removed again after the Fast NMS test;
* standard NMS (greedy, per class) is `torchvision.ops.nms`'s ONNX form, NonMaxSuppression, on
  every (class, prior) pair above the confidence threshold (the `yolact_d2_export::class_nms` op);
* the merge over classes takes the best `max_detections` (class, candidate) pairs of each image;
  images with fewer detections are padded (score 0, class -1, empty mask) and `num_detections`
  says how many rows are real.

This is exactly the detection set of `YolactPostProcessor` (its three NMS variants), up to the
order of exactly equal scores. "shortest_edge" models resize each image as Detectron2's
ResizeShortestEdge and pad it onto the fixed canvas, like `Yolact.preprocess_image`; the resized
size is computed from the image size when the graph is recorded, so those graphs have a fixed
image size. YOLACT++ adds its mask re-scoring (output "mask_scores") and its deformable convs
(ONNX DeformConv, opset 19).
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

# One post-processing: the pure-PyTorch Fast NMS test and crop of layers.ops and the decode /
# sanitize of modeling.inference, batched here over padded candidates.
from yolact_d2.layers.ops import suppressed_by_earlier, top_sorted, box_iou_matrix, crop_masks_pytorch
from yolact_d2.modeling.inference import sanitize_coordinates, decode_boxes

__all__ = ["YolactExportWrapper", "OUTPUT_NAMES", "RESCORED_OUTPUT_NAMES", "output_names"]

OUTPUT_NAMES = ("boxes", "scores", "classes", "masks", "num_detections")
RESCORED_OUTPUT_NAMES = OUTPUT_NAMES + ("mask_scores",)  # YOLACT++: class score x predicted mask IoU


def output_names(model: nn.Module) -> Tuple[str, ...]:
    return RESCORED_OUTPUT_NAMES if getattr(model, "mask_rescoring", None) is not None else OUTPUT_NAMES


@torch.library.custom_op("yolact_d2_export::class_nms", mutates_args=())
def class_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float) -> torch.Tensor:
    """Greedy NMS per (image, class), ONNX NonMaxSuppression semantics.

    boxes (B, N, 4) XYXY, scores (B, C, N); pairs with score <= score_threshold are ignored, a box
    is dropped when a kept higher-scoring box of its class has IoU > iou_threshold.
    Returns the kept (S, 3) int64 rows (image, class, box). A custom op so the exporter can write
    it as one NonMaxSuppression node (onnx.py) while eager / TorchScript runs torchvision's NMS.
    """
    rows = []
    for b in range(boxes.shape[0]):
        cls, idx = torch.nonzero(scores[b] > score_threshold, as_tuple=True)
        kept = batched_nms(boxes[b, idx].float(), scores[b, cls, idx].float(), cls, iou_threshold)
        rows.append(torch.stack([torch.full_like(kept, b), cls[kept], idx[kept]], dim=1))
    return torch.cat(rows) if rows else boxes.new_zeros((0, 3), dtype=torch.int64)


@class_nms.register_fake
def _class_nms_fake(boxes, scores, iou_threshold, score_threshold):
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n, 3), dtype=torch.int64)


class YolactExportWrapper(nn.Module):
    """images (B, 3, H, W) uint8, in the model's input_format, any size (all images of a batch
    share it) -> (boxes (B, D, 4) float pixels XYXY, scores (B, D), classes (B, D) int64 (-1 =
    padding), masks (B, D, H, W) bool, num_detections (B,) int64 [, mask_scores (B, D) for
    YOLACT++]), D = max_detections.

    Every setting of `YolactPostProcessor` (per-class / class-agnostic Fast NMS, standard NMS,
    crop, thresholds) and both resize modes; "shortest_edge" graphs are valid for the image size
    they were recorded with (see the module docstring).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        pp = model.post_processor
        self.model = model
        self.squash = model.resize_mode == "squash"
        # Network input: input_size square (squash) or the fixed shortest_edge canvas.
        self.net_size = (model.input_size, model.input_size) if self.squash else tuple(model._canvas_size())
        self.to_rgb = bool(model.to_rgb)
        self.conf_thresh = float(pp.conf_thresh)
        self.nms_iou = float(pp.nms_iou)
        self.top_k = int(pp.top_k)
        self.max_detections = int(pp.max_detections)
        self.score_thresh = float(pp.score_thresh)
        self.class_agnostic = bool(pp.class_agnostic)
        self.standard_nms = bool(pp.standard_nms)
        self.crop = bool(pp.crop)
        self.mask_threshold = float(pp.mask_threshold)
        self.integer_boxes = bool(pp.integer_boxes)
        self.mask_rescoring = getattr(model, "mask_rescoring", None)
        # Priors depend only on the (fixed) network input size: computed once, stored as a constant.
        with torch.no_grad():
            probe = torch.zeros(1, 3, *self.net_size, device=model.device)
            feats = model.backbone(probe)
            sizes = [tuple(feats[f].shape[-2:]) for f in model.head_features]
            priors = model.prior_generator(sizes, self.net_size, model.device)
        self.register_buffer("priors", priors.clone(), persistent=False)  # (P, 4)

    def _resized_size(self, height: int, width: int) -> Tuple[int, int]:
        return self.net_size if self.squash else tuple(self.model._resized_size(int(height), int(width)))

    def _normalize(self, images: torch.Tensor, resized: Tuple[int, int]) -> torch.Tensor:
        """Same maths as Yolact._normalize (official FastBaseTransform) + the canvas padding, batched."""
        x = images.float()
        if self.squash or tuple(images.shape[-2:]) != tuple(resized):
            x = F.interpolate(x, size=resized, mode="bilinear", align_corners=False)
        x = (x - self.model.pixel_mean) / self.model.pixel_std
        if self.to_rgb:
            # BGR <-> RGB as a flip, not `x[:, [2, 1, 0]]`: a list index is a host tensor copied to
            # the device at each call, which a CUDA graph cannot hold. contiguous(): the flip keeps
            # a channels-last input's layout, the list index gave NCHW, and the convs must see
            # the layout they always saw (the same values, bit for bit).
            x = torch.flip(x, dims=[1]).contiguous()
        if not self.squash:  # bottom/right zeros after normalisation, as preprocess_image
            x = F.pad(x, (0, self.net_size[1] - resized[1], 0, self.net_size[0] - resized[0]))
        return x

    def _merge(self, scores: torch.Tensor, per_row: int):
        """(B, R*per_row) candidate scores (-1 = none) -> best D: scores, flat index, row, column."""
        d = min(self.max_detections, scores.shape[1])
        det_scores, pick = top_sorted(scores, d, dim=1)  # (B, D); equal scores: lower index first
        return det_scores, pick, torch.div(pick, per_row, rounding_mode="floor"), pick % per_row

    def _suppress(self, cand: torch.Tensor, top_scores: torch.Tensor) -> torch.Tensor:
        """Fast NMS test on score-sorted candidates (..., K, 4) -> keep (..., K), the same test as
        fast_nms_pytorch; invalid (-1) candidates and those under score_thresh are dropped."""
        keep = suppressed_by_earlier(box_iou_matrix(cand, cand), self.nms_iou) & (top_scores > -0.5)
        if self.score_thresh > 0:
            keep = keep & (top_scores > self.score_thresh)
        return keep

    def _fast_nms(self, boxes: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor):
        """boxes (B, P, 4) relative, fg (B, P, C) -> scores (B, D), prior index (B, D), class (B, D)."""
        num_priors, num_classes = fg.shape[1], fg.shape[2]
        scores = torch.where(valid.unsqueeze(2), fg, torch.full_like(fg, -1.0)).transpose(1, 2)  # (B, C, P)
        k = min(self.top_k, num_priors)
        top_scores, top_idx = top_sorted(scores, k, dim=2)  # (B, C, K), descending
        cand = torch.gather(
            boxes.unsqueeze(1).expand(-1, num_classes, -1, -1), 2, top_idx.unsqueeze(3).expand(-1, -1, -1, 4)
        )  # (B, C, K, 4)
        keep = self._suppress(cand, top_scores)
        flat = torch.where(keep, top_scores, torch.full_like(top_scores, -1.0)).flatten(1)  # (B, C*K) class-major
        det_scores, pick, det_class, _ = self._merge(flat, k)
        return det_scores, torch.gather(top_idx.flatten(1), 1, pick), det_class

    def _fast_nms_class_agnostic(self, boxes: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor):
        """Official cross-class Fast NMS: each prior competes once, with its best class."""
        best, best_class = fg.max(dim=2)  # (B, P): first max wins on ties, as fast_nms
        scores = torch.where(valid, best, torch.full_like(best, -1.0))
        top_scores, top_idx = top_sorted(scores, min(self.top_k, scores.shape[1]), dim=1)  # (B, K)
        cand = torch.gather(boxes, 1, top_idx.unsqueeze(2).expand(-1, -1, 4))  # (B, K, 4)
        keep = self._suppress(cand, top_scores)
        flat = torch.where(keep, top_scores, torch.full_like(top_scores, -1.0))
        det_scores, pick, _, _ = self._merge(flat, flat.shape[1])
        det_prior = torch.gather(top_idx, 1, pick)
        return det_scores, det_prior, torch.gather(best_class, 1, det_prior)

    def _standard_nms(self, boxes: torch.Tensor, fg: torch.Tensor):
        """Greedy per-class NMS on all (class, prior) pairs above conf_thresh, in network-input
        pixels with the official "+1" convention (as YolactPostProcessor._standard_nms)."""
        bsz, num_priors, _ = fg.shape
        h, w = float(self.net_size[0]), float(self.net_size[1])
        pixel = boxes * boxes.new_tensor([w, h, w, h]) + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
        scores = fg.transpose(1, 2).contiguous()  # (B, C, P)
        kept = class_nms(pixel, scores, self.nms_iou, self.conf_thresh)  # (S, 3) image, class, prior
        flat_idx = kept[:, 1] * num_priors + kept[:, 2]
        flat = torch.full_like(scores, -1.0).flatten(1)  # (B, C*P)
        flat = flat.index_put((kept[:, 0], flat_idx), scores.flatten(1)[kept[:, 0], flat_idx])
        if self.score_thresh > 0:
            flat = torch.where(flat > self.score_thresh, flat, torch.full_like(flat, -1.0))
        det_scores, _, det_class, det_prior = self._merge(flat, num_priors)
        return det_scores, det_prior, det_class

    def _pixel_boxes(self, det_boxes, height, width, resized):
        """relative -> pixel boxes with YolactPostProcessor's own sanitize and scale rule."""
        # Image size as 0-d tensors: symbolic in a dynamic-size graph (squash).
        w = torch.zeros((), dtype=det_boxes.dtype, device=det_boxes.device) + width
        h = torch.zeros((), dtype=det_boxes.dtype, device=det_boxes.device) + height
        # squash: times the image size; shortest_edge (a fixed-size graph): the canvas maps to
        # net_size * image / resized, in the same float64 order as the post-processor.
        sx = w if self.squash else self.net_size[1] * int(width) / resized[1]
        sy = h if self.squash else self.net_size[0] * int(height) / resized[0]
        x1, x2 = sanitize_coordinates(det_boxes[..., 0], det_boxes[..., 2], sx, w)
        y1, y2 = sanitize_coordinates(det_boxes[..., 1], det_boxes[..., 3], sy, h)
        pixel_boxes = torch.stack([x1, y1, x2, y2], dim=2)
        return pixel_boxes.floor() if self.integer_boxes else pixel_boxes

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        height, width = images.shape[-2], images.shape[-1]
        resized = self._resized_size(height, width)
        feats = self.model.backbone(self._normalize(images, resized))
        return self.detections(feats, height, width, resized)

    def detections(self, feats, height, width, resized: Tuple[int, int]) -> Tuple[torch.Tensor, ...]:
        """FPN features -> the graph outputs (protonet, head, NMS, masks); YolactEdge's video graphs
        (deploy/video_export.py) feed it their keyframe or warped features."""
        m = self.model
        proto = m.protonet(feats[m.proto_feature]).permute(0, 2, 3, 1)  # (B, Hp, Wp, K)
        preds = m.head([feats[f] for f in m.head_features])
        conf = F.softmax(preds["conf"], dim=-1)  # (B, P, C+1)
        boxes = decode_boxes(preds["loc"], self.priors)  # (B, P, 4) relative XYXY
        fg = conf[:, :, 1:]  # (B, P, C)
        valid = fg.max(dim=2).values > self.conf_thresh  # (B, P): the official confidence pre-filter

        if self.standard_nms:
            det_scores, det_prior, det_class = self._standard_nms(boxes, fg)
        elif self.class_agnostic:
            det_scores, det_prior, det_class = self._fast_nms_class_agnostic(boxes, fg, valid)
        else:
            det_scores, det_prior, det_class = self._fast_nms(boxes, fg, valid)
        real = det_scores > -0.5  # (B, D)
        det_boxes = torch.gather(boxes, 1, det_prior.unsqueeze(2).expand(-1, -1, 4))  # (B, D, 4)
        coef = preds["coef"]
        det_coef = torch.gather(coef, 1, det_prior.unsqueeze(2).expand(-1, -1, coef.shape[2]))  # (B, D, K)

        bsz, hp, wp, nk = proto.shape
        lin = torch.matmul(proto.reshape(bsz, hp * wp, nk), det_coef.transpose(1, 2))  # (B, Hp*Wp, D)
        masks = torch.sigmoid(lin).transpose(1, 2).reshape(bsz, -1, hp, wp)  # (B, D, Hp, Wp)
        if self.crop:
            masks = crop_masks_pytorch(masks.reshape(-1, hp, wp), det_boxes.reshape(-1, 4)).reshape(bsz, -1, hp, wp)
        scores = torch.where(real, det_scores, torch.zeros_like(det_scores))
        extra: List[torch.Tensor] = []
        if self.mask_rescoring is not None:
            iou = self.mask_rescoring(masks.reshape(-1, 1, hp, wp)).reshape(bsz, masks.shape[1], -1)  # (B, D, C)
            cls_iou = torch.gather(iou, 2, det_class.clamp(min=0).unsqueeze(2)).squeeze(2)
            extra.append(scores * cls_iou)
        if not self.squash:
            # Padded input: to canvas resolution, cut the padding off, then to the image.
            masks = F.interpolate(masks, size=self.net_size, mode="bilinear", align_corners=False)
            masks = masks[:, :, : resized[0], : resized[1]]
        masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
        masks = (masks > self.mask_threshold) & real[:, :, None, None]  # (B, D, H, W)

        pixel_boxes = self._pixel_boxes(det_boxes, height, width, resized) * real.unsqueeze(2)
        classes = torch.where(real, det_class, torch.full_like(det_class, -1))
        return (pixel_boxes, scores, classes, masks, real.sum(dim=1), *extra)
