"""The one place that knows Detectron2 v0.6 vs main differences (detected by feature, not version)."""
from typing import List

import torch
import torch.distributed as dist

from detectron2.structures import ImageList
from detectron2.utils import comm


def image_list_from_tensors(tensors: List[torch.Tensor], size_divisibility: int = 0, pad_value: float = 0.0) -> ImageList:
    """ImageList.from_tensors without main-only arguments (`padding_constraints`)."""
    return ImageList.from_tensors(tensors, size_divisibility, pad_value)


def create_local_process_group(num_per_machine: int, machine_rank: int, world_size: int) -> None:
    """Detectron2's per-machine process group, which `comm.get_local_rank` needs (main has a
    helper for it; v0.6 sets it only inside its CUDA-only `launch`)."""
    if hasattr(comm, "create_local_process_group"):  # Detectron2 main
        comm.create_local_process_group(num_per_machine)
        return
    num_machines = world_size // num_per_machine
    for i in range(num_machines):  # v0.6: every rank must create every group, in the same order
        group = dist.new_group(list(range(i * num_per_machine, (i + 1) * num_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def train_loader_kwargs_from_yacs(cfg, mapper) -> dict:
    """The keyword arguments `build_detection_train_loader(cfg, mapper=...)` derives from a yacs
    config (dataset dicts, sampler, batch size, workers): Detectron2's own from_config, present
    under this name in v0.6 and main, so yacs users' DATASETS / DATALOADER / SOLVER keys keep
    their meaning when we hand the data to another loader builder."""
    from detectron2.data import build as d2_build

    from_config = getattr(d2_build, "_train_loader_from_config", None)
    if from_config is None:
        raise ImportError(
            "this Detectron2 has no detectron2.data.build._train_loader_from_config; yolact_d2's yacs "
            "train loader needs it (present in v0.6 and main). Please report your Detectron2 version."
        )
    return from_config(cfg, mapper=mapper)
