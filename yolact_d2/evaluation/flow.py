"""Flow evaluation of YolactEdge's flow net: mean end-point error (EPE) in pixels.

Inputs carry the ground-truth `flow` (2, H, W): backward flow in pixels of the mapped image
(target(x, y) ~ reference(x + u, y + v)), NaN where unknown, as VideoPairMapper gives it in test
mode on a flow-bearing dataset (FlyingChairs, the moving-shapes set). Outputs are the model's
`estimate_flow(batched_inputs)`: one (2, h, w) backward flow per input, in pixels of the network
input. When (h, w) differs from (H, W) (a model that resizes its input), the estimate is resized
bilinearly to (H, W) and its u / v scaled by W / w and H / h, so both are in the image's pixels.

EPE = sum over valid pixels of ||estimate - gt|| / number of valid pixels, over the whole set
(pixel-weighted, the FlyingChairs convention); a pixel is valid when both gt components are finite.
EPE_zero is the same for the zero flow (the mean gt motion): the baseline a flow net must beat.
EPE_moving / EPE_zero_moving: the same over the valid pixels that move at least MOVING_PX pixels
(a synthetic set's static background, most of its pixels, would otherwise dominate the mean).
"""
import logging
from collections import OrderedDict
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

__all__ = ["FlowEPEEvaluator", "inference_on_flow_dataset", "flow_in_image_pixels"]

logger = logging.getLogger(__name__)

MOVING_PX = 1.0  # gt motion (pixels) from which a pixel counts as moving


def flow_in_image_pixels(flow: torch.Tensor, size) -> torch.Tensor:
    """(2, h, w) flow in pixels of an h x w grid -> (2, H, W) in pixels of the H x W image."""
    h, w = flow.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return flow
    resized = F.interpolate(flow[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    return resized * torch.tensor([W / w, H / h], dtype=resized.dtype, device=resized.device).view(2, 1, 1)


class FlowEPEEvaluator(DatasetEvaluator):
    """Mean EPE of `model.estimate_flow` against the inputs' gt `flow` (module docstring).

    Results: {"flow": {"EPE", "EPE_zero", "EPE_moving", "EPE_zero_moving" (pixels), "valid_fraction"
    (of all pixels, those with a known flow), "moving_fraction" (of those, the moving ones)}}. Run it
    with `inference_on_flow_dataset` (or tools/train_net.py).
    """

    def __init__(self, dataset_name: str = None, distributed: bool = True):
        self.dataset_name = dataset_name  # only named in messages
        self._distributed = distributed
        self.reset()

    def reset(self):
        # float64 sums: millions of pixels
        self._sums = dict.fromkeys(("epe", "epe_zero", "epe_moving", "epe_zero_moving"), 0.0)
        self._sums.update(valid=0, moving=0, pixels=0)

    def process(self, inputs: List[Dict], outputs):
        if len(inputs) != len(outputs):
            raise ValueError(f"FlowEPEEvaluator: {len(inputs)} inputs but {len(outputs)} flow estimates.")
        for inp, est in zip(inputs, outputs):
            if "flow" not in inp:
                raise ValueError(
                    f"FlowEPEEvaluator: input {inp.get('file_name')} has no gt 'flow'; evaluate a dataset with flows "
                    "(FlyingChairs, moving shapes) through VideoPairMapper(is_train=False, ...)."
                )
            gt = torch.as_tensor(inp["flow"]).double()
            if isinstance(est, dict):
                est = est["flow"]
            if gt.dim() != 3 or gt.shape[0] != 2 or est.dim() != 3 or est.shape[0] != 2:
                raise ValueError(
                    f"FlowEPEEvaluator: {inp.get('file_name')}: gt flow {tuple(gt.shape)} and estimate "
                    f"{tuple(est.shape)} must both be (2, H, W)."
                )
            est = flow_in_image_pixels(est.detach().to("cpu", torch.float64), gt.shape[-2:])
            valid = torch.isfinite(gt).all(dim=0)  # (H, W)
            epe = torch.linalg.vector_norm(est[:, valid] - gt[:, valid], dim=0)  # (N,) valid pixels
            motion = torch.linalg.vector_norm(gt[:, valid], dim=0)  # (N,): the zero flow's error
            moving = motion >= MOVING_PX
            for key, values in (("epe", epe), ("epe_zero", motion), ("epe_moving", epe[moving]),
                                ("epe_zero_moving", motion[moving])):
                self._sums[key] += float(values.sum())
            self._sums["valid"] += int(valid.sum())
            self._sums["moving"] += int(moving.sum())
            self._sums["pixels"] += valid.numel()

    def evaluate(self):
        sums = self._sums
        if self._distributed and comm.get_world_size() > 1:
            parts = comm.gather(sums)
            if not comm.is_main_process():
                return {}
            sums = {k: sum(p[k] for p in parts) for k in sums}
        name = f" of {self.dataset_name!r}" if self.dataset_name else ""
        if sums["valid"] == 0:
            logger.warning(f"FlowEPEEvaluator: no pixel{name} with a known flow was evaluated.")
            return {}
        moving = sums["moving"] or float("nan")  # no moving pixel: NaN, not 0
        res = OrderedDict(
            EPE=sums["epe"] / sums["valid"],
            EPE_zero=sums["epe_zero"] / sums["valid"],
            EPE_moving=sums["epe_moving"] / moving,
            EPE_zero_moving=sums["epe_zero_moving"] / moving,
            valid_fraction=sums["valid"] / sums["pixels"],
            moving_fraction=sums["moving"] / sums["valid"],
        )
        logger.info(f"Flow end-point error{name} (pixels):\n" + create_small_table(res))
        return {"flow": res}


class _FlowEstimation(nn.Module):
    """model.estimate_flow as a forward, so that Detectron2's inference_on_dataset runs it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batched_inputs):
        return self.model.estimate_flow(batched_inputs)


def inference_on_flow_dataset(model, data_loader, evaluator: FlowEPEEvaluator):
    """Detectron2's inference_on_dataset (eval mode, no_grad, timing) with `model.estimate_flow`."""
    if not hasattr(model, "estimate_flow"):
        raise TypeError(
            f"Flow evaluation: {type(model).__name__} has no estimate_flow(batched_inputs); it needs a YolactEdge "
            "video model (a flow_net), e.g. a configs/yolact_edge flow pre-training config."
        )
    return inference_on_dataset(_FlowEstimation(model), data_loader, evaluator)
