"""Synchronised batch norm for small per-process batches."""
import torch
from torch import nn

from detectron2.layers import NaiveSyncBatchNorm

__all__ = ["convert_sync_batchnorm"]


def convert_sync_batchnorm(module: nn.Module, device: str) -> nn.Module:
    """Replace every nn.BatchNorm2d (not FrozenBatchNorm2d) with a synchronised one, keeping its state.

    CUDA: torch's nn.SyncBatchNorm. CPU: Detectron2's NaiveSyncBatchNorm (nn.SyncBatchNorm refuses CPU
    tensors under gloo). With one process both behave exactly like BatchNorm2d.
    """
    if str(device).startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_naive(module)


def _to_naive(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = NaiveSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = _to_naive(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
