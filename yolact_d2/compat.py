"""The one place that knows Detectron2 v0.6 vs main differences (detected by feature, not version).

Other parts of yolact_d2 may append small functions here.
"""
import inspect
from typing import List

import torch

from detectron2.structures import ImageList


def image_list_from_tensors(tensors: List[torch.Tensor], size_divisibility: int = 0, pad_value: float = 0.0) -> ImageList:
    """ImageList.from_tensors without main-only arguments (`padding_constraints`)."""
    return ImageList.from_tensors(tensors, size_divisibility, pad_value)


def has_padding_constraints() -> bool:
    """Detectron2 main's Backbone has `padding_constraints`; v0.6 has only `size_divisibility`."""
    from detectron2.modeling.backbone import Backbone

    return hasattr(Backbone, "padding_constraints")


def accepts_kwarg(fn, name: str) -> bool:
    """Whether callable `fn` takes keyword `name` (v0.6 vs main signatures)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
