"""Detectron2's SimpleTrainer with optional CUDA AMP and a divergence guard (non-finite predictions,
losses or weights stop training, and no checkpoint of a diverged state survives)."""
import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from detectron2.engine import SimpleTrainer, hooks
from detectron2.utils import comm

__all__ = ["YolactTrainer", "NonFiniteLossError", "DivergenceSafeCheckpointer"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A prediction, a loss term or (after the optimizer step) a weight became NaN or inf."""


_ADVICE = (
    "Lower the learning rate (optimizer.lr) or lengthen the warm-up (lr_multiplier.warmup_until), and "
    "check the data for degenerate boxes; then continue from the last good checkpoint with --resume."
)


_AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class YolactTrainer(SimpleTrainer):
    """SimpleTrainer (v0.6 and main) plus:

    - `amp=True`: torch.autocast on CUDA (Detectron2's AMPTrainer asserts CUDA; on CPU training stays
      fp32 and `amp` must be off), `amp_dtype` "float16" with a GradScaler or "bfloat16" (fp32's
      exponent range: no loss scaling; needs compute capability >= 8.0);
    - a divergence guard: NaN/inf predictions (checked by the criterion before its losses) or loss
      terms (checked on every worker before backward/step) stop training with NonFiniteLossError
      naming the iteration and the tensor or loss term; no step is taken. Weights made non-finite by
      the optimizer step stop it too, before the hooks (so before any checkpoint of that state). A
      total loss above `explode_factor` x the run's first one is logged as a WARNING.
    - `last_sane_iter`: the last iteration whose forward pass was finite and not exploded. The state
      saved at iteration j (after step j) is known good only once forward j + 1 was sane;
      DivergenceSafeCheckpointer withdraws the others when training stops on divergence.
    """

    def __init__(self, model, data_loader, optimizer, amp: bool = False, grad_scaler=None,
                 explode_factor: float = 1e4, amp_dtype: str = "float16"):
        super().__init__(model, data_loader, optimizer)
        self.explode_factor = explode_factor
        self.diverged = False
        self.last_sane_iter: Optional[int] = None
        self._first_loss: Optional[float] = None
        self._exploded = False
        self.amp = bool(amp)
        self.amp_dtype = _AMP_DTYPES.get(str(amp_dtype))
        if self.amp_dtype is None:
            raise ValueError(f"train.amp.dtype must be one of {sorted(_AMP_DTYPES)}, got {amp_dtype!r}.")
        self.grad_scaler = None
        if self.amp:
            if not torch.cuda.is_available():
                raise ValueError("train.amp.enabled=True needs CUDA; set train.amp.enabled=False for CPU training.")
            if self.amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                raise ValueError("train.amp.dtype=bfloat16 needs a GPU with bfloat16 (compute capability >= 8.0); "
                                 "use train.amp.dtype=float16.")
            if self.amp_dtype == torch.float16:  # fp16's small range needs loss scaling; bf16 does not
                self.grad_scaler = grad_scaler or torch.amp.GradScaler("cuda")

    def _check_finite(self, loss_dict: Dict[str, torch.Tensor]) -> None:
        names = sorted(loss_dict)
        finite = torch.stack([torch.isfinite(loss_dict[k].detach()).all() for k in names]).float()
        if comm.get_world_size() > 1:
            # Every worker must stop together, or the others would hang in the gradient all-reduce.
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool((finite < 1).any()):
            bad = [k for k, ok in zip(names, finite.tolist()) if ok < 1]
            values = {k: float(v.detach()) for k, v in loss_dict.items()}
            self._stop(
                f"Loss term(s) {', '.join(bad)} became NaN/inf at iteration {self.iter} "
                f"(losses on this worker: {values}). Training stopped before the optimizer step."
            )

    def _stop(self, message: str, cause: Optional[BaseException] = None):
        self.diverged = True
        raise NonFiniteLossError(f"{message} {_ADVICE}") from cause

    def _note_loss(self, total: float) -> None:
        """Track the last sane forward pass; warn (once per episode) when the loss explodes."""
        if self._first_loss is None:
            self._first_loss = total
        exploded = self._first_loss > 0 and total > self.explode_factor * self._first_loss
        if exploded and not self._exploded:
            logger.warning(
                f"DIVERGING: total loss {total:.4g} at iteration {self.iter} is more than "
                f"{self.explode_factor:g}x its first value ({self._first_loss:.4g}). The learning rate "
                f"is probably too high (optimizer.lr). Checkpoints from now on are withdrawn if training "
                "then stops on NaN/inf."
            )
        self._exploded = exploded
        if not exploded:
            self.last_sane_iter = self.iter

    def _check_finite_weights(self) -> None:
        """After the step (identical on every worker under DDP, so no all-reduce is needed)."""
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not params or bool(torch.stack([torch.isfinite(p.detach()).all() for _, p in params]).all()):
            return
        bad = [n.replace("module.", "", 1) for n, p in params if not bool(torch.isfinite(p.detach()).all())]
        self._stop(
            f"The optimizer step at iteration {self.iter} made {len(bad)} weight(s) NaN/inf "
            f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); this state is not checkpointed."
        )

    def run_step(self):
        assert self.model.training, "[YolactTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        try:
            with torch.autocast(device_type="cuda", dtype=self.amp_dtype, enabled=self.amp):
                loss_dict = self.model(data)
        except FloatingPointError as e:  # the criterion's NonFinitePredictionError (NaN/inf outputs)
            self._stop(f"At iteration {self.iter}: {e} Training stopped before the optimizer step.", e)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        self._check_finite(loss_dict)
        losses = sum(loss_dict.values())
        self._note_loss(float(losses.detach()))

        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self._write_metrics(loss_dict, data_time)
        if len(loss_dict) == 1 and comm.is_main_process():
            # Detectron2 logs a lone loss term (e.g. YolactEdge's loss_flow) only as total_loss: name it too.
            self.storage.put_scalar(next(iter(loss_dict)), self.storage.history("total_loss").latest())
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self._check_finite_weights()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


class DivergenceSafeCheckpointer(hooks.PeriodicCheckpointer):
    """Detectron2's PeriodicCheckpointer hook that never leaves a diverged state as the checkpoint to
    resume from: when a YolactTrainer stops with NonFiniteLossError, the checkpoints this run wrote
    after its last sane forward pass are renamed `*.pth.diverged` (kept for inspection) and
    `last_checkpoint` points to the newest good one, so `--resume` continues from a good state. (The
    weights after the step that diverges are usually still finite, only huge: they show as NaN/inf
    at the next forward pass, after that state was saved.)"""

    def before_train(self):
        super().before_train()
        self._written: List[Tuple[int, str]] = []  # (iteration, path) of this run's checkpoints
        cp = self.checkpointer
        self._tag_before = os.path.basename(cp.get_checkpoint_file()) if cp.has_checkpoint() else None

    def after_step(self):
        iteration = self.trainer.iter
        super().after_step()
        names = []  # the files fvcore's step() writes at this iteration
        if (iteration + 1) % self.period == 0:
            names.append(f"{self.file_prefix}_{iteration:07d}.pth")
        if self.max_iter is not None and iteration >= self.max_iter - 1:
            names.append(f"{self.file_prefix}_final.pth")
        self._written += [(iteration, os.path.join(self.checkpointer.save_dir, n)) for n in names]

    def after_train(self):
        if getattr(self.trainer, "diverged", False):
            self._withdraw_diverged()
        else:
            super().after_train()

    def _withdraw_diverged(self):
        last_sane = self.trainer.last_sane_iter
        start = self.trainer.start_iter
        first_bad = last_sane if last_sane is not None else start - 1
        good, withdrawn = None, []
        for iteration, path in self._written:
            if iteration >= first_bad:
                if os.path.exists(path):
                    os.replace(path, path + ".diverged")
                    withdrawn.append(os.path.basename(path))
            elif os.path.exists(path):
                good = os.path.basename(path)
        if not withdrawn:
            return
        save_dir = self.checkpointer.save_dir
        if good is None and self._tag_before and os.path.exists(os.path.join(save_dir, self._tag_before)):
            good = self._tag_before
        if good is not None:
            self.checkpointer.tag_last_checkpoint(good)
        elif os.path.exists(os.path.join(save_dir, "last_checkpoint")):
            os.remove(os.path.join(save_dir, "last_checkpoint"))
        logger.warning(
            f"Withdrew the checkpoint(s) of the diverged state ({', '.join(withdrawn)} -> *.diverged). "
            + (f"--resume continues from {good}." if good else "No good checkpoint is left: --resume starts anew.")
        )
