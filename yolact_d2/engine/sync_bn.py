"""Synchronised batch norm for small per-process batches."""
import torch
from torch import nn

from detectron2.layers import NaiveSyncBatchNorm
from detectron2.utils import comm

__all__ = ["convert_sync_batchnorm"]


class _MatchingNaiveSyncBatchNorm(NaiveSyncBatchNorm):
    """Detectron2's NaiveSyncBatchNorm with BatchNorm2d's running statistics: Detectron2's moves
    running_var towards the biased batch variance and does not count batches, so N processes drifted
    from one process on the same global batch (running_var by a factor (n-1)/n each step). Here the
    update uses the unbiased variance of all n values a channel has over the processes, as BatchNorm2d."""

    def forward(self, input):
        if comm.get_world_size() == 1 or not self.training or getattr(self, "_stats_mode", "") != "" or not self.momentum:
            return super().forward(input)
        old = self.running_var.clone()
        out = super().forward(input)
        biased = old + (self.running_var - old) / self.momentum  # the variance Detectron2 used
        n = input.numel() // input.shape[1] * comm.get_world_size()  # equal batches per process
        self.running_var.copy_(old + self.momentum * (biased * (n / max(n - 1, 1)) - old))
        self.num_batches_tracked += 1
        return out


def convert_sync_batchnorm(module: nn.Module, device: str) -> nn.Module:
    """Replace every nn.BatchNorm2d (not FrozenBatchNorm2d) with a synchronised one, keeping its state.

    CUDA: torch's nn.SyncBatchNorm. CPU: Detectron2's NaiveSyncBatchNorm (nn.SyncBatchNorm refuses CPU
    tensors under gloo), with BatchNorm2d's running statistics. With one process both behave exactly
    like BatchNorm2d.
    """
    if str(device).startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_naive(module)


def _to_naive(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = _MatchingNaiveSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = _to_naive(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
