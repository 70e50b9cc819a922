"""Backward-compatible alias: the exporters moved to `yolact_d2.deploy`.

`from yolact_d2.export.onnx import OnnxPredictor` (and .optimize / .wrapper / .torchscript) keeps
working and gives the very same module objects as `yolact_d2.deploy.*` (registered in sys.modules,
not copies, so classes and monkeypatches are shared). New code imports `yolact_d2.deploy`.
"""
import importlib
import sys

from yolact_d2.deploy import *  # noqa: F401,F403 - the package's public names
from yolact_d2.deploy import __all__  # noqa: F401

for _name in ("optimize", "wrapper", "onnx", "torchscript"):  # none imports onnx at module level
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"yolact_d2.deploy.{_name}")
    globals()[_name] = sys.modules[f"{__name__}.{_name}"]
del _name
