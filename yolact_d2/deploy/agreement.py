"""Do two runtimes give the same detections? Row matching between an exported model's Instances and
the PyTorch model's, used by `tools/export_model.py --verify` and `scripts/check_all_exports.py`.

Rows cannot be compared by position: runtimes order near-equal scores differently (TopK vs the eager
stable sort), and neighbours of one class can lie within the score tolerance of each other with
equal masks. So each reference row takes the unused exported row of its class with score within
SCORE_TOL (or the caller's score_tol) whose mask and box agree, then the closest score. Same detections = every reference row
matched, scores (and YOLACT++ mask scores) within SCORE_TOL, mask IoU >= MASK_IOU, boxes within
BOX_TOL pixels. When the reference fills max_detections, reference rows within SCORE_TOL of the cut
may be swapped for other rows of that score ("tie_at_cut").
"""
import torch

__all__ = ["SCORE_TOL", "MASK_IOU", "BOX_TOL", "mask_iou", "compare_detections"]

SCORE_TOL, MASK_IOU, BOX_TOL = 1e-4, 0.99, 1.0


def mask_iou(a, b, ignore=None):
    """(len(a), len(b)) mask IoU; `ignore` (like a): pixels of each row of `a` left out."""
    keep = torch.ones_like(a) if ignore is None else ~ignore
    a, b, keep = a.flatten(1).float(), b.flatten(1).float(), keep.flatten(1).float()
    inter = (a * keep) @ b.t()
    union = (a * keep).sum(1)[:, None] + keep @ b.t() - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def compare_detections(got, want, max_detections=None, score_tol: float = SCORE_TOL) -> dict:
    """Match exported rows `got` to reference rows `want` (Instances) and report the figures.

    `want.near_threshold` (optional, like its masks): pixels left out of the mask IoU (the IoU over all
    pixels is reported beside it). max_detections: the model's cap (None: no tie at a cut).
    score_tol: the score bound of matching and of "same" (fp32 runtimes: SCORE_TOL; fp16 ones wider)."""
    raw_iou = mask_iou(want.pred_masks, got.pred_masks)  # (want, got)
    iou = mask_iou(want.pred_masks, got.pred_masks, want.near_threshold) if want.has("near_threshold") else raw_iou
    box_diff = (want.pred_boxes.tensor[:, None] - got.pred_boxes.tensor[None]).abs().amax(dim=2)  # (want, got)
    same = (want.pred_classes[:, None] == got.pred_classes[None, :]) & (
        (want.scores[:, None] - got.scores[None, :]).abs() <= score_tol)
    cut = float(want.scores.min()) + score_tol if max_detections is not None and len(want) == max_detections else -1.0
    used, pairs, unmatched, tie_at_cut = set(), [], 0, 0
    for i in range(len(want)):
        candidates = [j for j in same[i].nonzero().flatten().tolist() if j not in used]
        if not candidates:
            if float(want.scores[i]) <= cut:
                tie_at_cut += 1
            else:
                unmatched += 1
            continue
        # the candidate with the closest score among those whose mask and box agree: neighbours of
        # one class can lie within SCORE_TOL of each other with equal masks (the largest IoU alone
        # then takes a later row's partner)
        j = max(candidates, key=lambda j: (bool(iou[i, j] >= MASK_IOU) and bool(box_diff[i, j] <= BOX_TOL),
                                           -abs(float(want.scores[i] - got.scores[j]))))
        used.add(j)
        pairs.append((i, j))
    wi = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    gi = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    diffs = [(want.scores[wi] - got.scores[gi]).abs()]
    if want.has("mask_scores"):
        diffs.append((want.mask_scores[wi] - got.mask_scores[gi]).abs() if got.has("mask_scores")
                     else torch.full((len(pairs),), float("inf")))
    score_diff = float(torch.cat(diffs).max()) if pairs else 0.0
    max_box_diff = float(box_diff[wi, gi].max()) if pairs else 0.0
    min_iou = float(iou[wi, gi].min()) if pairs else 1.0
    min_raw_iou = float(raw_iou[wi, gi].min()) if pairs else 1.0
    classes_equal = unmatched == 0 and len(got) == len(want)
    return {
        "detections": len(want), "exported": len(got), "classes_equal": classes_equal, "tie_at_cut": tie_at_cut,
        "max_score_diff": score_diff, "min_mask_iou": min_iou, "min_mask_iou_all_pixels": min_raw_iou,
        "max_box_diff": max_box_diff,
        "same": classes_equal and score_diff <= score_tol and min_iou >= MASK_IOU and max_box_diff <= BOX_TOL,
    }
