"""Warnings for a YOLACT training that runs but learns no masks: dead prototypes, stuck mask loss.

Both happen with a learning rate too high for the data and batch size (e.g. a small custom set with
the shapes recipe: all prototypes are exactly 0 after the protonet's final ReLU, the mask loss stays
at its first value while the box loss falls, and segm AP ends at 0). Nothing crashes, so without a
check the run is wasted silently.
"""
import logging
from typing import Optional

import numpy as np
import torch
from torch import nn

from detectron2.engine import HookBase

__all__ = ["TrainingHealthHook"]

logger = logging.getLogger(__name__)


class TrainingHealthHook(HookBase):
    """Every `period` iterations, measures the fraction of dead prototypes (channels exactly 0 over the
    whole batch at the protonet's output; a forward hook, active only on those iterations) and logs
    it as `proto_dead_fraction`; logs a WARNING (once) naming the likely cause when:

    - at least `dead_fraction` of the prototypes are dead on `patience` samples in a row (a fresh
      narrow model may start with half of them dead and recover), or
    - after `stuck_after` of train.max_iter, the mask loss (median of the last `period` values) is still
      within `stuck_tolerance` of its start (median of the first `period` values) while the box loss
      fell below `box_fall` x its start.

    Args:
        protonet: the module whose output is the prototypes (B, K, H, W), or None to skip that check.
        lr, total_batch_size: the run's optimizer.lr and batch, for the suggestion in the warning.
    """

    def __init__(
        self,
        protonet: Optional[nn.Module],
        lr: float,
        total_batch_size: int,
        period: int = 20,
        dead_fraction: float = 0.9,
        patience: int = 2,
        stuck_after: float = 0.3,
        stuck_tolerance: float = 0.02,
        box_fall: float = 0.9,
    ):
        self.protonet = protonet
        self.lr = float(lr)
        self.total_batch_size = int(total_batch_size)
        self.period = max(int(period), 1)
        self.dead_fraction = dead_fraction
        self.patience = max(int(patience), 1)
        self._dead_in_a_row = 0
        self.stuck_after = stuck_after
        self.stuck_tolerance = stuck_tolerance
        self.box_fall = box_fall
        self._sample = False
        self._dead: Optional[float] = None
        self._handle = None
        self._warned = set()

    # ------------------------------------------------------------------ hooks
    def before_train(self):
        if self.protonet is not None:
            self._handle = self.protonet.register_forward_hook(self._measure)

    def after_train(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def before_step(self):
        self._sample = self.trainer.iter % self.period == 0
        self._dead = None

    def after_step(self):
        storage = self.trainer.storage
        if self._dead is not None:
            storage.put_scalar("proto_dead_fraction", self._dead, smoothing_hint=False)
            self._dead_in_a_row = self._dead_in_a_row + 1 if self._dead >= self.dead_fraction else 0
            if self._dead_in_a_row >= self.patience:
                self._warn(
                    "dead",
                    f"Dead prototypes: {self._dead:.0%} of the prototypes are exactly 0 over the batch at "
                    f"iteration {self.trainer.iter} (after the protonet's final ReLU). The mask branch gets no "
                    "gradient through them and segm AP will stay near 0.",
                )
        if self._sample:
            self._check_stuck_mask_loss(storage)

    # ------------------------------------------------------------------ checks
    def _measure(self, module, inputs, output):
        if self._sample and module.training and isinstance(output, torch.Tensor) and output.dim() == 4:
            alive = output.detach().amax(dim=(0, 2, 3)) != 0  # (K,)
            self._dead = 1.0 - float(alive.float().mean())

    def _check_stuck_mask_loss(self, storage):
        histories = storage.histories()
        if "loss_mask" not in histories or "loss_box" not in histories:
            return  # not the main process (metrics are gathered there), or another model
        if self.trainer.iter < self.stuck_after * self.trainer.max_iter:
            return
        mask, box = histories["loss_mask"], histories["loss_box"]
        mask_first, box_first = (float(np.median([v for v, _ in h.values()[: self.period]])) for h in (mask, box))
        mask_now, box_now = mask.median(self.period), box.median(self.period)
        if mask_first > 0 and abs(mask_now - mask_first) <= self.stuck_tolerance * mask_first and (
            box_now < self.box_fall * box_first
        ):
            self._warn(
                "stuck",
                f"Mask loss stuck: {mask_now:.4g} at iteration {self.trainer.iter}, within "
                f"{self.stuck_tolerance:.0%} of its start {mask_first:.4g}, while the box loss fell "
                f"from {box_first:.4g} to {box_now:.4g}. The masks are not being learned.",
            )

    def _warn(self, kind: str, what: str):
        if kind in self._warned:
            return
        self._warned.add(kind)
        suggested = self.lr / 4
        logger.warning(
            f"{what} Likely cause: the learning rate optimizer.lr={self.lr:g} is too high for this data at "
            f"total batch size {self.total_batch_size}. Try optimizer.lr={suggested:g} (or a longer warm-up, "
            "lr_multiplier.warmup_until), e.g. starting from a checkpoint with --resume or from scratch."
        )
