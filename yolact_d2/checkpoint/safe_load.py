"""The one reader of weights files: nothing in a checkpoint can run code.

A pickle can name any importable callable and have it called while it loads (`os.system`,
`open(path, "w")`, ...), so neither `pickle.load` nor `torch.load(weights_only=False)` is used:

- `.pkl` (Detectron2 / Detectron / Caffe2 model-zoo files: dicts of numpy arrays) goes through
  `RestrictedUnpickler`, which resolves only the globals numpy array pickles need (array
  reconstruction, dtypes, scalars), OrderedDict and a few builtins; Python's own `pickle.load`
  has no allow-list, and `torch.load(weights_only=True)` refuses numpy arrays.
- everything else (`.pth`, `.pyth`, a torch.save zip under any name) through
  `torch.load(weights_only=True)`, torch's own allow-list (tensors, containers, primitives).

An empty, text, truncated or refused file raises `CheckpointFileError` naming the file, what was
found and what was expected.
"""
import importlib
import importlib.util
import io
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any, Dict, Optional

import torch

__all__ = [
    "CheckpointFileError",
    "UnsafeCheckpointError",
    "RestrictedUnpickler",
    "load_checkpoint_file",
    "model_state_from",
    "checkpoint_meta",
]


class CheckpointFileError(ValueError):
    """A weights file that cannot be read as a checkpoint (empty, text, truncated, not a dict)."""


class UnsafeCheckpointError(CheckpointFileError):
    """A weights file whose pickle asks for an object outside the allow-list (it could run code)."""


_ZIP_MAGIC = b"PK\x03\x04"


def _numpy_core(submodule: str) -> str:
    # numpy 2 moved numpy.core to numpy._core (the old name is a deprecated alias); old pickles say
    # numpy.core, new ones numpy._core: both resolve to whichever this numpy has.
    return "numpy._core" + submodule if importlib.util.find_spec("numpy._core") else "numpy.core" + submodule


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as Python 3 pickles bytes for protocol <= 2; only the latin1 text codec."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} (only latin1 is allowed)")
    return text.encode("latin1")


# (module as written in the pickle, name) -> (module to import, name). Nothing here has side effects.
_ALLOWED_GLOBALS = {
    **{
        (mod, name): (_numpy_core(".multiarray"), name)
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    },
    **{(mod, "_frombuffer"): (_numpy_core(".numeric"), "_frombuffer") for mod in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
    **{
        (mod, name): ("builtins", name)
        for mod in ("builtins", "__builtin__")  # Python 2 pickles say __builtin__
        for name in ("set", "frozenset", "bytearray", "complex", "slice")
    },
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only `_ALLOWED_GLOBALS` (what Detectron2 model-zoo pickles of
    numpy arrays use) and refuses everything else, before anything is called."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return getattr(importlib.import_module(target[0]), target[1])

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(
            "persistent id (this looks like a legacy torch.save file, not a numpy pickle): save it as .pth"
        )


def _describe_content(path: str) -> str:
    """What the file looks like, for an error message."""
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(_ZIP_MAGIC):
        return "a zip (torch.save) archive that is truncated or corrupt"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        return f"a text file (it starts with {first!r})"
    return "truncated, corrupt or not a checkpoint"


def _unsafe(path: str, what: str, how: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refusing to load '{path}': it asks for {what}, which a weights file never needs "
        f"(loading it could run code; read with {how}). Nothing was executed. A trusted file can be "
        "re-saved as a plain dict of tensors: torch.save({'model': state_dict}, 'weights.pth')."
    )


def _load_pkl(path: str) -> Any:
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(_ZIP_MAGIC):  # a torch.save file named .pkl
        return _load_torch(path)
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "is not allowed" in str(e) or "_codecs.encode" in str(e):
            raise _unsafe(path, str(e).replace(" is not allowed", ""), "a restricted unpickler") from None
        raise CheckpointFileError(
            f"cannot read '{path}' as a Detectron2 model-zoo .pkl (a pickled dict of numpy arrays): "
            f"{e}; the file is {_describe_content(path)}."
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
        raise CheckpointFileError(
            f"cannot read '{path}' as a Detectron2 model-zoo .pkl (a pickled dict of numpy arrays): "
            f"{type(e).__name__}: {e}; the file is {_describe_content(path)}."
        ) from None


def _first_sentence(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text.split(". ")[0][:160]


def _load_torch(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names a refused global in its message ("Unsupported global: GLOBAL x.y", "GLOBAL x.y
        # whose module x is blocked"); other weights-only failures are malformed data (text, junk).
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if "Weights only load failed" in str(e) and found:
            raise _unsafe(path, f"the global '{found.group(1)}'", "torch.load(weights_only=True)") from None
        error = e
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for bad files
        error = e
    # torch's weights-only refusal of malformed data reads like a safety refusal: say what it is.
    reason = "malformed pickle data" if "Weights only load failed" in str(error) else _first_sentence(error)
    raise CheckpointFileError(
        f"cannot read '{path}' as a PyTorch checkpoint (torch.load(weights_only=True)): "
        f"{type(error).__name__}: {reason}; the file is "
        f"{_describe_content(path)}. Expected a file written by torch.save ({{'model': state_dict}}), "
        "e.g. a training checkpoint or the output of tools/convert_yolact_weights.py."
    ) from None


def load_checkpoint_file(path: str) -> Any:
    """Read a weights file without running any code from it (see the module docstring).

    Raises FileNotFoundError when it does not exist, `UnsafeCheckpointError` when its pickle asks
    for anything outside the allow-list, `CheckpointFileError` when it is empty, text, truncated.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file '{path}' does not exist.")
    if os.path.getsize(path) == 0:
        raise CheckpointFileError(
            f"weights file '{path}' is empty (0 bytes): an interrupted copy or save? Give a checkpoint "
            "written by torch.save (.pth) or a Detectron2 model-zoo .pkl."
        )
    return _load_pkl(path) if path.endswith(".pkl") else _load_torch(path)


def model_state_from(obj: Any, path: str) -> Mapping:
    """The state dict in a loaded checkpoint: `{"model": state_dict, ...}` or a plain state dict."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointFileError(
            f"'{path}' holds a {type(obj).__name__}, not a state dict or {{'model': state_dict}}."
        )
    return obj


def checkpoint_meta(obj: Any) -> Dict:
    """The `meta` dict yolact_d2 writes into its checkpoints ({"thing_classes": [...]}), or {}."""
    meta: Optional[Any] = obj.get("meta") if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}
