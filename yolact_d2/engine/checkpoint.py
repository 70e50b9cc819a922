"""DetectionCheckpointer with safe reading, atomic saves, strict evaluation loading and
class-count-aware fine-tuning."""
import glob
import os
import re
import socket
import tempfile
from collections import defaultdict
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from detectron2.checkpoint import DetectionCheckpointer

from yolact_d2.checkpoint.mismatch import CLASS_DEPENDENT_KEYS, StateDictDiff, WeightsMismatchError, is_class_dependent
from yolact_d2.checkpoint.safe_load import CheckpointFileError, load_checkpoint_file

__all__ = ["YolactCheckpointer", "CLASS_DEPENDENT_KEYS"]

_TMP_PREFIX = ".tmp_"
_HOST = socket.gethostname()


def _temp_prefix(path: str) -> str:
    # ".tmp_<name>@<host>@<pid>@": a later run can tell a dead writer's leftovers from a live save.
    return f"{_TMP_PREFIX}{os.path.basename(path)}@{_HOST}@{os.getpid()}@"


def _writer_alive(temp_name: str) -> bool:
    """Whether the process that made this temp file may still be writing it. Files from another host
    count as alive (we cannot check); files without host/pid (older versions) as dead."""
    parts = temp_name.split("@")
    if len(parts) < 4 or not parts[-2].isdigit():
        return False
    host, pid = parts[-3], int(parts[-2])
    if host != _HOST:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str, write_fn) -> None:
    """Write through a temporary file in the same directory, fsync, then os.replace:
    a reader (or a run killed with -9 at any moment) sees the old file or the new one, never half.
    The result gets the mode a plain open() would give (0666 & ~umask): mkstemp makes 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _group_by_module(keys: Sequence[str], depth: int = 3) -> str:
    """'backbone.lateral_convs.0.weight', 'head.cls_score.bias', ... -> 'backbone.lateral_convs.0 (2),
    head.cls_score (2)': modules (up to `depth` levels) with their key counts."""
    groups: Dict[str, int] = defaultdict(int)
    for k in keys:
        groups[".".join(k.split(".")[:-1][:depth]) or k] += 1
    return ", ".join(f"{g} ({n})" for g, n in sorted(groups.items()))


class YolactCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, plus:

    - every file is read by `yolact_d2.checkpoint.safe_load` (a `.pkl` through a restricted
      unpickler, others with torch.load(weights_only=True)): a weights file never runs code;
    - `save` and the `last_checkpoint` tag are written atomically (tmp file + os.replace) with
      ordinary permissions; temporary files a killed save left behind are removed at construction;
      `meta` (e.g. {"thing_classes": [...]}) is stored in every checkpoint;
    - loading is strict (any missing, unexpected or wrong-shape key is a `WeightsMismatchError`)
      when `strict=True` (evaluation, inference) and when `resume_or_load` resumes our own run;
    - only fine-tuning from `train.init_checkpoint` (`resume_or_load` without a checkpoint to
      resume, or `load` with `strict=False`) is lenient: class-dependent layers of another shape
      keep their fresh initialisation (logged as a fine-tuning re-initialisation), missing keys
      (e.g. a backbone-only ImageNet file) are logged as a grouped summary, any other shape
      mismatch and a checkpoint that fills none of the model's keys are errors;
    - `init_may_miss` (regexes; None: any key may be missing) makes that fine-tuning load strict about
      missing keys: a model key the init checkpoint lacks and no pattern matches is a
      `WeightsMismatchError` naming the keys (YolactEdge video configs: everything but the flow net
      and SPA must come from the image model).
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        strict: bool = False,
        meta: Optional[Mapping[str, Any]] = None,
        class_dependent_keys: Sequence[str] = CLASS_DEPENDENT_KEYS,
        init_may_miss: Optional[Sequence[str]] = None,
        **kwargs,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self.init_may_miss = None if init_may_miss is None else tuple(init_may_miss)
        self.meta = dict(meta or {})
        self.class_dependent_keys = tuple(class_dependent_keys)  # regexes
        self.reinitialized_keys = []
        self._strict_now = strict
        self._loading_path: Optional[str] = None  # for error messages
        if self.save_dir and self.save_to_disk:
            self._remove_stale_temp_files()

    # ------------------------------------------------------------------ saving
    def _remove_stale_temp_files(self) -> None:
        """A save killed between mkstemp and os.replace leaves a full-size hidden temp file. Those of
        live writers (e.g. a training run while this process only evaluates) are left alone."""
        found = glob.glob(os.path.join(glob.escape(self.save_dir), _TMP_PREFIX + "*"))
        stale = sorted(p for p in found if not _writer_alive(os.path.basename(p)))
        for path in stale:
            if os.path.isfile(path):
                os.remove(path)
        if stale:
            self.logger.warning(
                f"Removed {len(stale)} temporary file(s) left by an interrupted save in {self.save_dir}: "
                + ", ".join(os.path.basename(p) for p in stale)
            )

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.meta:
            data["meta"] = self.meta
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    # ------------------------------------------------------------------ reading
    def _load_file(self, filename: str) -> Dict[str, Any]:
        """Detectron2's `_load_file` formats, read safely (its own reader uses plain pickle.load).

        `.pkl`: a Detectron2 model-zoo file ({"model", "__author__"}) as is; else a Caffe2 /
        Detectron1 file ("blobs" or a flat dict of arrays) with Detectron2's name-matching
        heuristics. `.pyth`: a pycls file ({"model_state"}), also matched heuristically. Anything
        else: a torch.save file, `{"model": ...}` or a plain state dict."""
        data = load_checkpoint_file(filename)
        if not isinstance(data, dict):
            raise CheckpointFileError(
                f"'{filename}' holds a {type(data).__name__}, not a checkpoint dict ({{'model': state_dict}})."
            )
        if filename.endswith(".pkl"):
            if "model" in data and "__author__" in data:
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            if "blobs" in data:  # detection models have "blobs", ImageNet models do not
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            if "model_state" not in data:
                raise CheckpointFileError(f"'{filename}': a pycls .pyth checkpoint must contain 'model_state'.")
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return data if "model" in data else {"model": data}

    # ------------------------------------------------------------------ loading
    def load(self, path: str, *args, **kwargs):
        self._loading_path = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading_path = None

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resuming our own run is strict; starting from `path` (init_checkpoint) fine-tunes."""
        resuming = resume and self.has_checkpoint()
        if not resuming and self.init_may_miss is not None and not os.path.isfile(path or ""):
            raise FileNotFoundError(
                f"train.init_checkpoint '{path}' does not exist, and this config cannot start without it (its "
                "image parts must be loaded): train the model it builds on first (scripts/run_video.sh does)."
            )
        self._strict_now = self.strict or resuming
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._strict_now = self.strict

    def _load_model(self, checkpoint):
        state = checkpoint.get("model", {})
        got_shapes = {
            (k[len("module.") :] if k.startswith("module.") else k): tuple(getattr(v, "shape", ()))
            for k, v in state.items()
        }
        source = self._loading_path or "the checkpoint"
        incompatible = super()._load_model(checkpoint)
        model_shapes = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        if self._strict_now:
            wrong = {k for k, _, _ in incompatible.incorrect_shapes}  # fvcore also lists these as missing
            StateDictDiff(
                missing={k: model_shapes[k] for k in incompatible.missing_keys if k not in wrong},
                unexpected={k: got_shapes.get(k) for k in incompatible.unexpected_keys},
                wrong=[(k, tuple(a), tuple(b)) for k, a, b in incompatible.incorrect_shapes],
            ).raise_if_mismatch(source)
            return incompatible
        return self._fine_tuning_report(incompatible, model_shapes, source)

    def _fine_tuning_report(self, incompatible, model_shapes, source):
        bad = [(k, a, b) for k, a, b in incompatible.incorrect_shapes if not is_class_dependent(k, self.class_dependent_keys)]
        if bad:
            lines = "\n".join(f"  {k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in bad)
            raise ValueError(
                f"The checkpoint '{source}' does not fit this model (shape mismatch outside the "
                f"class-dependent layers):\n{lines}\nCheck that the config (backbone, FPN channels, "
                "prototypes, anchors) matches the one the checkpoint was trained with."
            )
        skipped = {k for k, _, _ in incompatible.incorrect_shapes}
        # BatchNorm's step counter is filled in by torch itself when a checkpoint lacks it: not counted.
        counted = [k for k in model_shapes if not k.endswith("num_batches_tracked")]
        missing = [k for k in incompatible.missing_keys if k not in skipped]  # fvcore lists skipped ones too
        loaded = [k for k in counted if k not in skipped and k not in set(missing)]
        if not loaded:
            raise ValueError(
                f"The checkpoint '{source}' fills none of the model's {len(counted)} parameters and "
                "buffers (no key matches): it is not a checkpoint of this model, its backbone or an "
                "ImageNet file converted with tools/convert_imagenet_backbone.py. Model keys look like "
                f"'{next(iter(model_shapes), '')}'."
            )
        self._check_init_may_miss(missing, source)
        self.reinitialized_keys = [k for k, _, _ in incompatible.incorrect_shapes]
        if self.reinitialized_keys:
            lines = "\n".join(
                f"  {k}: checkpoint {tuple(a)} -> model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes
            )
            self.logger.warning(
                "Fine-tuning re-initialisation: the class count differs from the checkpoint, so "
                f"{len(self.reinitialized_keys)} class-dependent parameter(s) keep their fresh "
                f"initialisation:\n{lines}"
            )
        if missing:
            self.logger.warning(
                f"Fine-tuning from '{source}': it filled {len(loaded)} of the model's {len(counted)} "
                f"keys; {len(missing)} more keep their fresh initialisation: " + _group_by_module(missing)
            )
        if incompatible.unexpected_keys:
            self.logger.warning(
                f"Fine-tuning from '{source}': {len(incompatible.unexpected_keys)} checkpoint key(s) are not "
                "in the model and were ignored: " + _group_by_module(incompatible.unexpected_keys)
            )
        # Detectron2 would warn once more per key: the summary above says it all.
        return incompatible._replace(incorrect_shapes=[], missing_keys=[], unexpected_keys=[])

    def _check_init_may_miss(self, missing: Sequence[str], source: str) -> None:
        if self.init_may_miss is None:
            return
        bad = [k for k in missing if not any(re.search(p, k) for p in self.init_may_miss)]
        if bad:
            raise WeightsMismatchError(
                f"train.init_checkpoint '{source}' lacks {len(bad)} key(s) this config must start from "
                f"(only keys matching {list(self.init_may_miss)} may start fresh): {_group_by_module(bad)}. "
                "Pass a checkpoint that has them: for a YolactEdge video config, the image model it builds on "
                "(e.g. the main job's output/yolact_shapes/model_final.pth) or the flow stage's model_final.pth."
            )
