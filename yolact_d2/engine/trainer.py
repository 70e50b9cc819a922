"""Detectron2's SimpleTrainer with optional CUDA AMP and a NaN/inf loss guard."""
import logging
import time
from typing import Dict

import torch
import torch.distributed as dist

from detectron2.engine import SimpleTrainer
from detectron2.utils import comm

__all__ = ["YolactTrainer", "NonFiniteLossError"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; raised before the optimizer step, so the weights stay good."""


class YolactTrainer(SimpleTrainer):
    """SimpleTrainer (v0.6 and main) plus:

    - `amp=True`: torch.autocast + GradScaler on CUDA (Detectron2's AMPTrainer asserts CUDA; on CPU
      training stays fp32 and `amp` must be off);
    - a NaN/inf guard checked on every worker *before* backward/step: training stops with
      NonFiniteLossError naming the iteration and the loss term(s); no step is taken, and the
      checkpoints on disk are the last good ones (checkpoints are only written by the periodic hook).
    """

    def __init__(self, model, data_loader, optimizer, amp: bool = False, grad_scaler=None):
        super().__init__(model, data_loader, optimizer)
        self.amp = bool(amp)
        if self.amp:
            if not torch.cuda.is_available():
                raise ValueError("train.amp.enabled=True needs CUDA; set train.amp.enabled=False for CPU training.")
            self.grad_scaler = grad_scaler or torch.amp.GradScaler("cuda")
        else:
            self.grad_scaler = None

    def _check_finite(self, loss_dict: Dict[str, torch.Tensor]) -> None:
        names = sorted(loss_dict)
        finite = torch.stack([torch.isfinite(loss_dict[k].detach()).all() for k in names]).float()
        if comm.get_world_size() > 1:
            # Every worker must stop together, or the others would hang in the gradient all-reduce.
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool((finite < 1).any()):
            bad = [k for k, ok in zip(names, finite.tolist()) if ok < 1]
            values = {k: float(v.detach()) for k, v in loss_dict.items()}
            raise NonFiniteLossError(
                f"Loss term(s) {', '.join(bad)} became NaN/inf at iteration {self.iter} "
                f"(losses on this worker: {values}). Training stopped before the optimizer step; "
                "the last checkpoint in the output directory is the last good one. Lower the learning "
                "rate (optimizer.lr) or lengthen the warm-up (lr_multiplier.warmup_until), and check the "
                "data for degenerate boxes."
            )

    def run_step(self):
        assert self.model.training, "[YolactTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(device_type="cuda", enabled=self.amp):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        self._check_finite(loss_dict)
        losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
