"""Official YOLACT optimizer: SGD, lr 1e-3 (batch 8), momentum 0.9, weight decay 5e-4 on all parameters."""
import torch

from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

SGD = L(torch.optim.SGD)(
    # `model` is filled in by tools/train_net.py.
    params=L(get_default_optimizer_params)(),
    lr=1e-3,
    momentum=0.9,
    weight_decay=5e-4,
)
