"""yolact_d2: YOLACT and YOLACT++ real-time instance segmentation as a Detectron2 plugin.

Importing the package registers its meta-architecture and backbones in Detectron2's registries.
"""
__version__ = "0.1.0"

from . import modeling  # noqa: F401,E402  (registers Yolact in META_ARCH_REGISTRY, backbones)
from .config import add_yolact_config  # noqa: F401,E402  (yacs users: get_cfg() + this)
from .keyframe_schedule import AdaptiveKeyframes  # noqa: F401,E402  (VideoPredictor's adaptive rule)
from .predictor import Predictor, VideoPredictor  # noqa: F401,E402  (LazyConfig counterpart of DefaultPredictor; video)
