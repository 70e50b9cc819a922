"""DetectionCheckpointer with atomic saves and class-count-aware loading."""
import logging
import os
import re
import tempfile
from typing import Any, Sequence

import torch

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["YolactCheckpointer", "CLASS_DEPENDENT_KEYS"]

# Parameters whose shape depends on the number of classes (head class scores, semantic-seg conv,
# YOLACT++ mask-IoU net output).
CLASS_DEPENDENT_KEYS = (r"(^|\.)cls_score\.", r"(^|\.)semantic_seg_conv\.", r"(^|\.)mask_rescoring\.")


def _atomic_write(path: str, write_fn) -> None:
    """Write through a temporary file in the same directory, fsync, then os.replace:
    a reader (or a run killed with -9 at any moment) sees the old file or the new one, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class YolactCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, plus:

    - `save` and the `last_checkpoint` tag are written atomically (tmp file + os.replace);
    - loading a checkpoint whose class-dependent layers have another shape (fine-tuning on a dataset
      with another class count) keeps those layers at their fresh initialisation and logs exactly
      which keys; any other shape mismatch is an error instead of Detectron2's silent skip.
    """

    def __init__(self, model, save_dir: str = "", *, class_dependent_keys: Sequence[str] = CLASS_DEPENDENT_KEYS, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.class_dependent_keys = [re.compile(p) for p in class_dependent_keys]
        self.reinitialized_keys = []

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
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

    # ------------------------------------------------------------------ loading
    def _is_class_dependent(self, key: str) -> bool:
        return any(p.search(key) for p in self.class_dependent_keys)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        bad = [(k, a, b) for k, a, b in incompatible.incorrect_shapes if not self._is_class_dependent(k)]
        if bad:
            lines = "\n".join(f"  {k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in bad)
            raise ValueError(
                "The checkpoint does not fit this model (shape mismatch outside the class-dependent "
                f"layers):\n{lines}\nCheck that the config (backbone, FPN channels, prototypes, "
                "anchors) matches the one the checkpoint was trained with."
            )
        self.reinitialized_keys = [k for k, _, _ in incompatible.incorrect_shapes]
        if self.reinitialized_keys:
            lines = "\n".join(
                f"  {k}: checkpoint {tuple(a)} -> model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes
            )
            self.logger.warning(
                "Class count differs from the checkpoint: re-initialised "
                f"{len(self.reinitialized_keys)} class-dependent parameter(s), everything else loaded:\n{lines}"
            )
        # Detectron2 would warn once more per key ("Skip loading parameter ..."): we already did.
        return incompatible._replace(incorrect_shapes=[])
