"""yolact_d2: YOLACT and YOLACT++ real-time instance segmentation as a Detectron2 plugin.

Importing the package registers its meta-architecture and backbones in Detectron2's registries.
"""
__version__ = "0.1.0"

from . import modeling  # noqa: F401,E402  (registers Yolact in META_ARCH_REGISTRY, backbones)
from .predictor import Predictor  # noqa: F401,E402  (LazyConfig counterpart of DefaultPredictor)
