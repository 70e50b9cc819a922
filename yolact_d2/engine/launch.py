"""Multi-process launch on GPUs (Detectron2's `launch`, NCCL) or on CPUs (gloo).

Detectron2 v0.6's `launch` asserts CUDA, hard-codes NCCL and calls torch.cuda.set_device, so CPU
processes are spawned here with gloo and the same per-machine process group Detectron2 sets up.
"""
import logging
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from yolact_d2.compat import create_local_process_group

__all__ = ["launch", "launch_cpu"]

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_worker(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout):
    rank = machine_rank * num_per_machine + local_rank
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    except Exception:
        logger.error(f"Could not join the process group at {dist_url} (rank {rank} of {world_size}).")
        raise
    create_local_process_group(num_per_machine, machine_rank, world_size)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def launch_cpu(main_func, num_processes: int, num_machines: int = 1, machine_rank: int = 0,
               dist_url: str = "auto", args=(), timeout=DEFAULT_TIMEOUT):
    """Run `main_func(*args)` in `num_processes` CPU processes per machine, joined with gloo."""
    world_size = num_machines * num_processes
    if world_size <= 1:
        return main_func(*args)
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise ValueError("--dist-url auto works on one machine only; pass tcp://HOST:PORT of machine 0.")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(
        _cpu_worker,
        nprocs=num_processes,
        args=(main_func, world_size, num_processes, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


def launch(main_func, num_processes: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = "auto", args=(), device: str = "cuda", timeout=DEFAULT_TIMEOUT):
    """Detectron2's `launch` for CUDA, gloo CPU processes for device="cpu"."""
    if device == "cpu":
        return launch_cpu(main_func, num_processes, num_machines, machine_rank, dist_url, args, timeout)
    if num_processes > 1 and not torch.cuda.is_available():
        raise RuntimeError(
            f"--num-gpus {num_processes} needs CUDA, which is not available; for CPU processes add "
            "train.device=cpu."
        )
    return d2_launch(main_func, num_processes, num_machines=num_machines, machine_rank=machine_rank,
                     dist_url=dist_url, args=args, timeout=timeout)
