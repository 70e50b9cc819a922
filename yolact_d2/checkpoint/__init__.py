"""Checkpoint files: the safe reader, the state-dict fit check, official YOLACT conversion."""
from .convert import (
    RULES,
    ConversionError,
    ConversionSummary,
    Rule,
    add_rules,
    convert_official_state_dict,
    default_config_for,
    detect_variant,
    is_torchvision_resnet,
    load_official_checkpoint,
    torchvision_resnet_to_official,
)

__all__ = [
    "RULES",
    "Rule",
    "add_rules",
    "ConversionError",
    "ConversionSummary",
    "convert_official_state_dict",
    "detect_variant",
    "default_config_for",
    "load_official_checkpoint",
    "is_torchvision_resnet",
    "torchvision_resnet_to_official",
]
from .layouts import OFFICIAL_CONFIGS, official_layout, synthetic_official_state_dict  # noqa: E402

__all__ += ["OFFICIAL_CONFIGS", "official_layout", "synthetic_official_state_dict"]
from .mismatch import CLASS_DEPENDENT_KEYS, StateDictDiff, WeightsMismatchError  # noqa: E402
from .safe_load import (  # noqa: E402
    CheckpointFileError,
    UnsafeCheckpointError,
    checkpoint_meta,
    load_checkpoint_file,
    model_state_from,
)

__all__ += [
    "CLASS_DEPENDENT_KEYS",
    "StateDictDiff",
    "WeightsMismatchError",
    "CheckpointFileError",
    "UnsafeCheckpointError",
    "checkpoint_meta",
    "load_checkpoint_file",
    "model_state_from",
]
