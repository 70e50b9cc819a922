"""yolact_d2: YOLACT and YOLACT++ real-time instance segmentation as a Detectron2 plugin.

Importing the package registers its meta-architecture and backbones in Detectron2's registries.
"""
__version__ = "0.1.0"
