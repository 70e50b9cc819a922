"""Helpers for the checkpoint tests: the tiny shapes model, crafted pickles that would run code,
and tools/train_net.py as a subprocess on the tiny shapes config."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "shapes", "yolact_shapes_tiny.py")


def tiny_cfg(num_classes=None):
    from detectron2.config import LazyConfig

    from yolact_d2.modeling import set_num_classes

    cfg = LazyConfig.load(TINY)
    if num_classes is not None:
        set_num_classes(cfg.model, num_classes)
    return cfg


def tiny_model(num_classes=None, seed=0):
    import torch
    from detectron2.config import instantiate

    torch.manual_seed(seed)
    return instantiate(tiny_cfg(num_classes).model).eval()


class WritesFile:
    """Pickles as open(path, "w"): unpickling it with pickle.load creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class RunsShell:
    """Pickles as os.system("touch path"): unpickling it with pickle.load runs a shell command."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def train_net(*args, datasets_root, timeout=600):
    """tools/train_net.py on the tiny shapes config in a subprocess -> CompletedProcess (text)."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY, *args]
    env = dict(os.environ, PYTHONWARNINGS="ignore", DETECTRON2_DATASETS=str(datasets_root))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
