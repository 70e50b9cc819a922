"""Official YOLACT LR schedule: linear warm-up from 1e-4 over 500 iterations, x0.1 at each step.

`base_lr` and `max_iter` are left None here: tools/train_net.py fills them from optimizer.lr and
train.max_iter, so overriding those two keeps the schedule consistent.
"""
from detectron2.config import LazyCall as L

from yolact_d2.engine.schedule import yolact_lr_multiplier

lr_multiplier = L(yolact_lr_multiplier)(
    base_lr=None,
    max_iter=None,
    steps=(280000, 600000, 700000, 750000),  # yolact_base lr_steps
    gamma=0.1,
    warmup_init=1e-4,
    warmup_until=500,
)
