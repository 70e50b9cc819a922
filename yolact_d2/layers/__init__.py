"""YOLACT's custom ops (Fast NMS, mask crop, mask paste): compiled kernels with a pure-PyTorch fallback."""
from .ops import *  # noqa: F401,F403  (the public names are ops.__all__)
from .ops import __all__  # noqa: F401
