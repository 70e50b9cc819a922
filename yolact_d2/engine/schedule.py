"""The official YOLACT learning-rate schedule as a Detectron2 ParamScheduler (an LR multiplier), with
steps given as iterations or as fractions of max_iter, and the linear learning-rate scaling rule."""
import logging
from typing import List, Sequence

from fvcore.common.param_scheduler import CosineParamScheduler, MultiStepParamScheduler

from detectron2.solver import WarmupParamScheduler

__all__ = ["yolact_lr_multiplier", "cosine_lr_multiplier", "resolve_steps", "linear_scaled_lr", "use_config_lrs"]

logger = logging.getLogger(__name__)


def linear_scaled_lr(lr_per_image: float, total_batch_size: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): lr = lr_per_image x total batch size. A config writes
    `optimizer.lr = L(linear_scaled_lr)(lr_per_image=..., total_batch_size="${dataloader.train.total_batch_size}")`
    (tools/train_net.py evaluates it when loading), so overriding the batch size moves the lr."""
    if not lr_per_image > 0 or int(total_batch_size) <= 0:
        raise ValueError(
            f"linear_scaled_lr needs lr_per_image > 0 and total_batch_size > 0, got {lr_per_image} and {total_batch_size}"
        )
    return float(lr_per_image) * int(total_batch_size)


def resolve_steps(steps: Sequence[float], max_iter: int) -> List[int]:
    """LR steps as iterations: a number in (0, 1) is a fraction of max_iter (so the schedule follows
    an override of train.max_iter), a whole number >= 1 an absolute iteration (the official COCO
    configs). Steps at or past max_iter never happen and are dropped (logged)."""
    resolved = []
    for s in steps:
        if 0 < s < 1:
            resolved.append(int(round(s * max_iter)))
        elif s >= 1 and float(s).is_integer():
            resolved.append(int(s))
        else:
            raise ValueError(
                f"lr_multiplier.steps: {s!r} is neither a fraction of train.max_iter in (0, 1) nor a whole "
                f"iteration >= 1 (steps: {list(steps)})."
            )
    if resolved != sorted(resolved):
        raise ValueError(f"lr_multiplier.steps must increase, got {list(steps)} (= iterations {resolved})")
    dropped = [s for s in resolved if s >= max_iter]
    if dropped:
        logger.info(f"LR steps {dropped} are at or past max_iter={max_iter}: they do not happen.")
    return [s for s in resolved if s < max_iter]


def yolact_lr_multiplier(
    base_lr: float,
    max_iter: int,
    steps: Sequence[float] = (),
    gamma: float = 0.1,
    warmup_init: float = 1e-4,
    warmup_until: int = 500,
):
    """Official train.py: lr rises linearly from `warmup_init` to `base_lr` over iterations
    0..warmup_until, then is multiplied by `gamma` at each iteration in `steps` (lr_steps; iterations
    or fractions of max_iter, see resolve_steps).

    Detectron2's linear warm-up factor f(a) = w (1 - a) + a with a = iter / warmup_until equals the
    official (lr - init) * a + init when w = init / lr.
    """
    steps = resolve_steps(steps, max_iter)
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


def cosine_lr_multiplier(max_iter: int, warmup_until: int = 500, warmup_factor: float = 0.0):
    """Official YolactEdge video / flow schedule (`lr_schedule="cosine"`): lr x (cos(pi it / max_iter)
    + 1) / 2, after a linear warm-up from `warmup_factor` x lr over `warmup_until` iterations (official
    `lr_warmup_init=0`). `max_iter` None in a config: tools/train_net.py fills in train.max_iter."""
    scheduler = CosineParamScheduler(start_value=1.0, end_value=0.0)
    if warmup_until <= 0:
        return scheduler
    return WarmupParamScheduler(
        scheduler, warmup_factor=warmup_factor, warmup_length=min(warmup_until / max_iter, 1.0), warmup_method="linear"
    )


def use_config_lrs(optimizer, lrs: List[float]) -> None:
    """Set each param group's base learning rate (`initial_lr`, which Detectron2's LR scheduler
    multiplies) back to `lrs` after `optimizer.load_state_dict` restored a checkpoint's. Logs a change."""
    for i, (group, lr) in enumerate(zip(optimizer.param_groups, lrs)):
        old = group.get("initial_lr", group["lr"])
        if old != lr:
            logger.info(f"Param group {i}: base learning rate {old:g} from the checkpoint -> {lr:g} from the config.")
        group["initial_lr"] = group["lr"] = lr
