"""YOLACT training losses: prior matching, OHEM class loss, box loss, mask loss, semantic-seg loss
and (YOLACT++) mask-IoU loss, following the official `MultiBoxLoss` of yolact_base_config.

Inputs are the tensors of CONTRACTS.md ("Model tensors"); ground truth comes as Detectron2
`Instances` (pixels of the network input image) and is normalised to [0, 1] here, like the
official targets.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import BitMasks, Boxes, PolygonMasks, pairwise_ioa, pairwise_iou
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from yolact_d2.layers import crop_masks

__all__ = [
    "YolactLoss",
    "NonFinitePredictionError",
    "match_priors",
    "ohem_negatives",
    "encode_boxes",
    "priors_to_xyxy",
    "official_mask_bce",
]


class NonFinitePredictionError(FloatingPointError):
    """A network output (loc, conf, coef, proto, segm) holds NaN/inf: the weights have diverged.
    Raised before any loss is computed; `names` lists the tensors. The trainer re-raises it as its
    NonFiniteLossError with the iteration."""

    def __init__(self, names: List[str], message: str):
        super().__init__(message)
        self.names = names

# Official variances (0.1, 0.2) are Detectron2's box weights (10, 10, 5, 5); get_deltas does not clamp.
_BOX_CODER = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))


def priors_to_xyxy(priors: torch.Tensor) -> torch.Tensor:
    """priors: (P, 4) (cx, cy, w, h) -> (P, 4) (x1, y1, x2, y2), same units."""
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)


def encode_boxes(matched_xyxy: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Official SSD encoding of (P, 4) xyxy boxes w.r.t. (P, 4) cx/cy/w/h priors -> (P, 4) deltas."""
    return _BOX_CODER.get_deltas(priors_to_xyxy(priors), matched_xyxy)


def match_priors(
    gt_boxes: torch.Tensor,
    priors_xyxy: torch.Tensor,
    crowd_boxes: Optional[torch.Tensor] = None,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    crowd_iou: float = 0.7,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Assign every prior to a ground-truth box as the official `match` does.

    gt_boxes: (G, 4) xyxy, priors_xyxy: (P, 4) xyxy, crowd_boxes: (M, 4) xyxy (all same units).
    Returns (state: (P,) int64 with 1 = positive, 0 = negative, -1 = neutral/ignored,
             gt_index: (P,) int64 index into gt_boxes of each prior's match).
    Unlike Detectron2's Matcher, each GT's best prior is forced to that GT (greedy, highest IoU first),
    and non-positive priors covered by a crowd box (intersection / prior area > crowd_iou) are ignored.
    """
    num_priors = priors_xyxy.shape[0]
    device = priors_xyxy.device
    if gt_boxes.shape[0] == 0:
        state = torch.zeros(num_priors, dtype=torch.int64, device=device)
        gt_index = torch.zeros(num_priors, dtype=torch.int64, device=device)
    else:
        overlaps = pairwise_iou(Boxes(gt_boxes), Boxes(priors_xyxy))  # (G, P)
        best_overlap, gt_index = overlaps.max(dim=0)  # (P,)
        overlaps = overlaps.clone()
        # Greedy forcing: the (GT, prior) pair with the highest IoU first, then remove both.
        for _ in range(gt_boxes.shape[0]):
            best_prior_overlap, best_prior_idx = overlaps.max(dim=1)  # (G,)
            j = best_prior_overlap.argmax()
            i = best_prior_idx[j]
            overlaps[:, i] = -1
            overlaps[j, :] = -1
            best_overlap[i] = 2.0  # forced: never thresholded away
            gt_index[i] = j
        state = torch.ones(num_priors, dtype=torch.int64, device=device)
        state[best_overlap < pos_iou] = -1
        state[best_overlap < neg_iou] = 0

    if crowd_boxes is not None and crowd_boxes.shape[0] > 0 and crowd_iou < 1:
        # Official "crowd IoU" is intersection over the prior's area.
        crowd_cover = pairwise_ioa(Boxes(crowd_boxes), Boxes(priors_xyxy)).max(dim=0).values  # (P,)
        state[(state <= 0) & (crowd_cover > crowd_iou)] = -1
    return state, gt_index


def ohem_negatives(
    conf: torch.Tensor, conf_t: torch.Tensor, negpos_ratio: float = 3
) -> torch.Tensor:
    """Online hard negative mining (official `ohem_conf_loss` selection).

    conf: (B, P, C+1) logits; conf_t: (B, P) int64 targets (-1 neutral, 0 background, >0 class+1).
    Returns neg: (B, P) bool, per image the `negpos_ratio * num_pos` negatives (capped at P-1) with
    the highest background loss -log softmax(conf)[0]; positives and neutrals are never selected.
    """
    with torch.no_grad():
        pos = conf_t > 0
        bg_loss = torch.logsumexp(conf, dim=-1) - conf[..., 0]  # (B, P)
        bg_loss = bg_loss.masked_fill(pos | (conf_t < 0), 0.0)
        order = bg_loss.argsort(dim=1, descending=True, stable=True)
        rank = order.argsort(dim=1)
        num_pos = pos.sum(dim=1, keepdim=True)
        num_neg = torch.clamp(negpos_ratio * num_pos, max=pos.shape[1] - 1)
        neg = rank < num_neg
        neg &= ~pos
        neg &= conf_t >= 0
    return neg


def official_mask_bce(logits: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor, padding: int = 1) -> torch.Tensor:
    """Per-pixel official mask loss BCE(crop(sigmoid(logits)), target), computed from the logits.

    logits, target: (n, Hp, Wp) (target in {0, 1}); boxes: (n, 4) normalised xyxy. Official YOLACT
    zeroes the probabilities outside the padded box and calls F.binary_cross_entropy, whose logs are
    clamped at -100: outside the box a pixel costs 100 * target, inside BCE-with-logits clamped at
    100. Equal to the official value wherever fp32 sigmoid does not round to exactly 0 or 1
    (|logit| < ~16); beyond, the official loss jumps to the clamp (and its gradient vanishes) while this
    one keeps softplus(|logit|). Why logits: a sigmoid rounded to 1 never reaches the loss as
    "outside [0, 1]", and large logits keep a gradient.
    """
    inside = crop_masks(torch.ones_like(logits), boxes, padding=padding) > 0
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").clamp(max=100.0)
    return torch.where(inside, bce, 100.0 * target)


def _check_finite_predictions(tensors: Dict[str, torch.Tensor]) -> None:
    """Raise NonFinitePredictionError naming every non-finite tensor, on all workers together (a
    worker that raised alone would leave the others waiting in the gradient all-reduce)."""
    names = sorted(tensors)
    bad = torch.stack([~torch.isfinite(tensors[k].detach()).all() for k in names]).float()
    if comm.get_world_size() > 1:
        dist.all_reduce(bad)
    if bool(bad.any()):
        local = [k for k in names if not bool(torch.isfinite(tensors[k].detach()).all())]
        bad_names = [k for k, v in zip(names, bad.tolist()) if v > 0]
        where = "" if local == bad_names else f" (on this worker: {', '.join(local) or 'none'})"
        raise NonFinitePredictionError(
            bad_names, f"Prediction(s) {', '.join(bad_names)} hold NaN/inf{where}: the weights have diverged."
        )


def _mask_subset_generator(seed: int, image_index: int) -> Optional[torch.Generator]:
    """A generator for the random masks_to_train subset that depends only on (seed, training
    iteration, global image index): the same subset after --resume and with any number of
    processes. None outside training (no EventStorage): the global RNG, as official."""
    try:
        iteration = get_event_storage().iter
    except AssertionError:
        return None
    state = np.random.SeedSequence([int(seed), int(iteration), int(image_index)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _gt_bitmasks(instances, image_size) -> torch.Tensor:
    """gt_masks (BitMasks | PolygonMasks) -> (G, H, W) float at the network input size."""
    masks = instances.gt_masks
    height, width = int(image_size[0]), int(image_size[1])
    if isinstance(masks, PolygonMasks):
        masks = BitMasks.from_polygon_masks(masks, height, width)
    if isinstance(masks, BitMasks):
        masks = masks.tensor
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"gt_masks must be BitMasks, PolygonMasks or a tensor, got {type(masks).__name__}")
    mask_h, mask_w = masks.shape[-2:]
    if mask_h > height or mask_w > width:
        raise ValueError(
            f"gt_masks have size {(mask_h, mask_w)} but the network input is {(height, width)}: "
            "masks must be in input-image pixels (the mapper's augmented image)"
        )
    masks = masks.to(dtype=torch.float32)
    if (mask_h, mask_w) != (height, width):  # batch padding (bottom / right) of a smaller image
        masks = F.pad(masks, (0, width - mask_w, 0, height - mask_h))
    return masks


def _downsample_binary(masks: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(G, H, W) float -> (G, h, w) {0,1}: official bilinear downsample then threshold at 0.5."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0,) + tuple(size))
    down = F.interpolate(masks.unsqueeze(0), size, mode="bilinear", align_corners=False).squeeze(0)
    return down.gt(0.5).float()


class YolactLoss(nn.Module):
    """The official YOLACT criterion: returns loss_box, loss_cls, loss_mask, loss_semseg
    (+ loss_maskiou when predictions carry "maskiou_net"), each already weighted.

    Normalisation is the official one (box, class, mask and mask-IoU terms divided by the number of
    positive priors in the batch, semantic-seg by the batch size). With `normalize_across_workers`
    the positive count is averaged over distributed workers so that DDP's gradient averaging gives
    exactly the single-process loss of the global batch (the official DataParallel instead divided
    each GPU's chunk by its own count).

    Non-finite predictions raise NonFinitePredictionError before any loss is computed. The mask loss
    is computed from logits (official_mask_bce). The masks_to_train subset is drawn from a generator
    seeded by (seed, iteration, image), not the global RNG, so --resume and N processes reproduce it.
    """

    def __init__(
        self,
        num_classes: int,
        pos_iou: float = 0.5,
        neg_iou: float = 0.4,
        crowd_iou: float = 0.7,
        negpos_ratio: float = 3,
        box_weight: float = 1.5,
        cls_weight: float = 1.0,
        mask_weight: float = 6.125,
        semseg_weight: float = 1.0,
        masks_to_train: int = 100,
        maskiou_weight: float = 25.0,
        maskiou_discard_area: float = 25.0,
        crop_padding: int = 1,
        normalize_across_workers: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.pos_iou = pos_iou
        self.neg_iou = neg_iou
        self.crowd_iou = crowd_iou
        self.negpos_ratio = negpos_ratio
        self.box_weight = box_weight
        self.cls_weight = cls_weight
        self.mask_weight = mask_weight
        self.semseg_weight = semseg_weight
        self.masks_to_train = masks_to_train
        self.maskiou_weight = maskiou_weight
        self.maskiou_discard_area = maskiou_discard_area
        self.crop_padding = crop_padding
        self.normalize_across_workers = normalize_across_workers
        self.seed = seed  # of the masks_to_train subsets (see _mask_subset_generator)

    # ------------------------------------------------------------------ targets
    def _match_batch(self, priors: torch.Tensor, targets: List[dict]):
        """Per image: normalised GT boxes (G,4), 0-based classes (G,), conf_t (P,), gt_index (P,)."""
        priors_xyxy = priors_to_xyxy(priors)
        gt_boxes_all, gt_classes_all, conf_t, gt_index = [], [], [], []
        for target in targets:
            inst = target["instances"]
            height, width = target["image_size"]
            scale = priors.new_tensor([width, height, width, height])
            gt_boxes = inst.gt_boxes.tensor.to(priors.device, torch.float32) / scale  # (G, 4) in [0,1]
            gt_classes = inst.gt_classes.to(priors.device)
            if gt_classes.numel() and (gt_classes.min() < 0 or gt_classes.max() >= self.num_classes):
                raise ValueError(
                    f"gt_classes must lie in [0, {self.num_classes}) for a {self.num_classes}-class "
                    f"model, got {sorted(set(gt_classes.tolist()))}"
                )
            crowd = target.get("crowd_boxes")
            if crowd is not None and len(crowd):
                crowd = torch.as_tensor(crowd, dtype=torch.float32, device=priors.device).reshape(-1, 4) / scale
            state, idx = match_priors(
                gt_boxes, priors_xyxy, crowd, self.pos_iou, self.neg_iou, self.crowd_iou
            )
            conf = torch.zeros_like(state)
            if gt_classes.numel():
                conf = gt_classes[idx] + 1
            conf = torch.where(state > 0, conf, state)  # -1 neutral, 0 background, c+1 positive
            gt_boxes_all.append(gt_boxes)
            gt_classes_all.append(gt_classes)
            conf_t.append(conf)
            gt_index.append(idx)
        return gt_boxes_all, gt_classes_all, torch.stack(conf_t), torch.stack(gt_index)

    def _positive_normaliser(self, num_pos: torch.Tensor) -> torch.Tensor:
        num_pos = num_pos.float()
        if self.normalize_across_workers and comm.get_world_size() > 1:
            num_pos = num_pos.clone()
            dist.all_reduce(num_pos)
            num_pos = num_pos / comm.get_world_size()
        return num_pos.clamp(min=1.0)  # an image batch without objects gives 0 losses, not NaN

    # ------------------------------------------------------------------ forward
    def forward(self, predictions: Dict, priors: torch.Tensor, targets: List[dict]) -> Dict[str, torch.Tensor]:
        device_type = predictions["loc"].device.type
        # The official losses are fp32.
        with torch.autocast(device_type=device_type, enabled=False):
            return self._losses(predictions, priors.float(), targets)

    def _losses(self, predictions, priors, targets):
        loc = predictions["loc"].float()  # (B, P, 4)
        conf = predictions["conf"].float()  # (B, P, C+1)
        coef = predictions["coef"].float()  # (B, P, K)
        proto = predictions["proto"].float()  # (B, Hp, Wp, K)
        if conf.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"predictions['conf'] has {conf.shape[-1]} scores per prior but the loss was built "
                f"for {self.num_classes} classes (+1 background)"
            )
        if len(targets) != loc.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {loc.shape[0]} images")
        checked = {"loc": loc, "conf": conf, "coef": coef, "proto": proto}
        if predictions.get("segm") is not None:
            checked["segm"] = predictions["segm"]
        _check_finite_predictions(checked)

        gt_boxes, gt_classes, conf_t, gt_index = self._match_batch(priors, targets)
        pos = conf_t > 0  # (B, P)
        normaliser = self._positive_normaliser(pos.sum())

        losses = {}
        # Box loss: smooth-L1 on encoded targets of positive priors.
        box_targets = torch.stack(
            [encode_boxes(g[i] if len(g) else priors_to_xyxy(priors), priors) for g, i in zip(gt_boxes, gt_index)]
        )  # (B, P, 4)
        losses["loss_box"] = (
            F.smooth_l1_loss(loc[pos], box_targets[pos], reduction="sum") * self.box_weight / normaliser
        )

        # Class loss: softmax cross-entropy over positives + OHEM negatives.
        neg = ohem_negatives(conf, conf_t, self.negpos_ratio)
        keep = pos | neg
        losses["loss_cls"] = (
            F.cross_entropy(conf[keep], conf_t[keep], reduction="sum") * self.cls_weight / normaliser
        )

        mask_loss, maskiou_inputs = self._mask_loss(
            coef, proto, targets, pos, gt_index, gt_boxes, gt_classes, "maskiou_net" in predictions
        )
        losses["loss_mask"] = mask_loss / normaliser

        if "segm" in predictions and predictions["segm"] is not None:
            losses["loss_semseg"] = self._semseg_loss(predictions["segm"].float(), targets, gt_classes)

        if "maskiou_net" in predictions:
            losses["loss_maskiou"] = self._maskiou_loss(predictions["maskiou_net"], maskiou_inputs, proto) / normaliser
        return losses

    def _mask_loss(self, coef, proto, targets, pos, gt_index, gt_boxes, gt_classes, want_maskiou):
        """Sum over images of the official lincomb mask loss (before division by the positive count)."""
        batch, mask_h, mask_w, _ = proto.shape
        total = proto.sum() * 0.0  # keeps the graph connected when no image has positives
        maskiou_inputs, maskiou_targets, maskiou_labels = [], [], []
        for b in range(batch):
            pos_idx = gt_index[b][pos[b]]  # (n,) GT index of each positive prior
            if pos_idx.numel() == 0:
                continue
            with torch.no_grad():
                gt_masks = _gt_bitmasks(targets[b]["instances"], targets[b]["image_size"]).to(proto.device)
                gt_small = _downsample_binary(gt_masks, (mask_h, mask_w))  # (G, Hp, Wp)
            pos_coef = coef[b][pos[b]]  # (n, K)
            num_pos_before = pos_coef.shape[0]
            if num_pos_before > self.masks_to_train:
                # Official: a random subset of masks_to_train masks, loss rescaled to the full count.
                generator = _mask_subset_generator(self.seed, comm.get_rank() * batch + b)
                select = torch.randperm(num_pos_before, generator=generator)[: self.masks_to_train]
                select = select.to(pos_coef.device)
                pos_coef = pos_coef[select]
                pos_idx = pos_idx[select]
            num_used = pos_coef.shape[0]
            boxes = gt_boxes[b][pos_idx]  # (n, 4) normalised xyxy
            mask_t = gt_small[pos_idx]  # (n, Hp, Wp)

            logits = torch.einsum("hwk,nk->nhw", proto[b], pos_coef)  # (n, Hp, Wp)
            bce = official_mask_bce(logits, mask_t, boxes, self.crop_padding).sum(dim=(1, 2))
            # mask_proto_normalize_emulate_roi_pooling: divide by the GT box area at prototype
            # resolution, times Hp*Wp; the final / Hp / Wp is the official mask_alpha scaling.
            box_w = (boxes[:, 2] - boxes[:, 0]) * mask_w
            box_h = (boxes[:, 3] - boxes[:, 1]) * mask_h
            per_mask = bce / box_w / box_h * (mask_h * mask_w)
            if num_pos_before > num_used:
                per_mask = per_mask * (num_pos_before / num_used)
            total = total + per_mask.sum()

            if want_maskiou:
                pred = crop_masks(torch.sigmoid(logits), boxes, padding=self.crop_padding)  # (n, Hp, Wp)
                labels = gt_classes[b][pos_idx]
                if self.maskiou_discard_area > 0:
                    big = mask_t.sum(dim=(1, 2)) > self.maskiou_discard_area
                    pred, mask_t, labels = pred[big], mask_t[big], labels[big]
                if pred.shape[0]:
                    binary = pred.gt(0.5).float()
                    inter = (binary * mask_t).sum(dim=(1, 2))
                    union = binary.sum(dim=(1, 2)) + mask_t.sum(dim=(1, 2)) - inter
                    maskiou_inputs.append(pred.unsqueeze(1))  # (n, 1, Hp, Wp), not detached (official)
                    maskiou_targets.append(inter / union)
                    maskiou_labels.append(labels)
        mask_loss = total * self.mask_weight / mask_h / mask_w
        return mask_loss, (maskiou_inputs, maskiou_targets, maskiou_labels)

    def _semseg_loss(self, segm, targets, gt_classes):
        """Official semantic-segmentation loss: per-class union of GT masks at P3 resolution."""
        batch, num_classes, seg_h, seg_w = segm.shape
        total = segm.sum() * 0.0
        for b in range(batch):
            with torch.no_grad():
                gt_masks = _gt_bitmasks(targets[b]["instances"], targets[b]["image_size"]).to(segm.device)
                small = _downsample_binary(gt_masks, (seg_h, seg_w))  # (G, Hs, Ws)
                # Per-class union (max) of the GT masks in one scatter: a Python loop reading each
                # class with int() cost one GPU->host sync per ground-truth object.
                seg_t = torch.zeros_like(segm[b]).view(num_classes, -1)
                index = gt_classes[b].to(segm.device)[:, None].expand(-1, seg_t.shape[1])
                seg_t.scatter_reduce_(0, index, small.reshape(small.shape[0], seg_t.shape[1]), reduce="amax")
                seg_t = seg_t.view_as(segm[b])
            total = total + F.binary_cross_entropy_with_logits(segm[b], seg_t, reduction="sum")
        return total / seg_h / seg_w * self.semseg_weight / batch

    def _maskiou_loss(self, maskiou_net, inputs, proto):
        masks, ious, labels = inputs
        if not masks:  # every mask discarded as too small: official skips the term
            return sum(p.sum() for p in maskiou_net.parameters()) * 0.0 + proto.sum() * 0.0
        masks, ious, labels = torch.cat(masks), torch.cat(ious), torch.cat(labels)
        scores = maskiou_net(masks)  # (n, C) predicted IoU per class
        pred_iou = scores.gather(1, labels[:, None]).view(-1)
        return F.smooth_l1_loss(pred_iou, ious, reduction="sum") * self.maskiou_weight
