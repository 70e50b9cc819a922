"""The official YOLACT learning-rate schedule as a Detectron2 ParamScheduler (an LR multiplier)."""
import logging
from typing import List, Sequence

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.solver import WarmupParamScheduler

__all__ = ["yolact_lr_multiplier", "use_config_lrs"]

logger = logging.getLogger(__name__)


def yolact_lr_multiplier(
    base_lr: float,
    max_iter: int,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_init: float = 1e-4,
    warmup_until: int = 500,
):
    """Official train.py: lr rises linearly from `warmup_init` to `base_lr` over iterations
    0..warmup_until, then is multiplied by `gamma` at each iteration in `steps` (lr_steps).

    Detectron2's linear warm-up factor f(a) = w (1 - a) + a with a = iter / warmup_until equals the
    official (lr - init) * a + init when w = init / lr.
    """
    steps = [int(s) for s in steps if int(s) < max_iter]
    if steps != sorted(steps):
        raise ValueError(f"lr_multiplier.steps must increase, got {list(steps)}")
    values = [gamma**i for i in range(len(steps) + 1)]
    scheduler = MultiStepParamScheduler(values=values, milestones=steps, num_updates=max_iter)
    if warmup_until <= 0:
        return scheduler
    return WarmupParamScheduler(
        scheduler,
        warmup_factor=warmup_init / base_lr,
        warmup_length=min(warmup_until / max_iter, 1.0),
        warmup_method="linear",
    )


def use_config_lrs(optimizer, lrs: List[float]) -> None:
    """Set each param group's base learning rate (`initial_lr`, which Detectron2's LR scheduler
    multiplies) back to `lrs` after `optimizer.load_state_dict` restored a checkpoint's. Logs a change."""
    for i, (group, lr) in enumerate(zip(optimizer.param_groups, lrs)):
        old = group.get("initial_lr", group["lr"])
        if old != lr:
            logger.info(f"Param group {i}: base learning rate {old:g} from the checkpoint -> {lr:g} from the config.")
        group["initial_lr"] = group["lr"] = lr
