"""Training helpers on top of Detectron2's engine (used by tools/train_net.py)."""
from .checkpoint import CLASS_DEPENDENT_KEYS, YolactCheckpointer
from .data import StreamDataset, StreamSampler, build_resumable_train_loader
from .health import TrainingHealthHook
from .launch import launch, launch_cpu
from .overrides import ConfigOverrideError, UnknownConfigKeyError, apply_overrides
from .schedule import use_config_lrs, yolact_lr_multiplier
from .sync_bn import convert_sync_batchnorm
from .trainer import DivergenceSafeCheckpointer, NonFiniteLossError, YolactTrainer

__all__ = [
    "CLASS_DEPENDENT_KEYS",
    "YolactCheckpointer",
    "StreamDataset",
    "StreamSampler",
    "build_resumable_train_loader",
    "TrainingHealthHook",
    "launch",
    "launch_cpu",
    "ConfigOverrideError",
    "UnknownConfigKeyError",
    "apply_overrides",
    "yolact_lr_multiplier",
    "use_config_lrs",
    "convert_sync_batchnorm",
    "DivergenceSafeCheckpointer",
    "NonFiniteLossError",
    "YolactTrainer",
]
