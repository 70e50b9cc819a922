"""The installed Detectron2 is a real, working package (wheel built by scripts/build_detectron2_wheel.py
or an upstream build that was already there)."""
import importlib
import importlib.metadata
import subprocess
import sys

import numpy as np
import pytest
import torch

SUBPACKAGES = [
    "detectron2.config",
    "detectron2.data",
    "detectron2.data.transforms",
    "detectron2.modeling",
    "detectron2.engine",
    "detectron2.evaluation",
    "detectron2.checkpoint",
    "detectron2.model_zoo",
    "detectron2.structures",
    "detectron2.layers",
    "detectron2.solver",
    "detectron2.utils.visualizer",
    "detectron2.utils.collect_env",
]


def _is_python_only_build():
    return "+nocsrc" in importlib.metadata.version("detectron2")


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_imports(name):
    importlib.import_module(name)


def test_pip_metadata():
    dist = importlib.metadata.distribution("detectron2")
    assert dist.version.startswith("0.6") or not _is_python_only_build()
    requires = " ".join(dist.requires or [])
    for dep in ("fvcore", "iopath", "pycocotools", "omegaconf", "hydra-core"):
        assert dep in requires, f"detectron2 wheel does not declare {dep}"
    out = subprocess.run([sys.executable, "-m", "pip", "show", "detectron2"], capture_output=True, text=True)
    assert out.returncode == 0 and "Name: detectron2" in out.stdout


def test_model_zoo_configs_and_collect_env():
    from detectron2 import model_zoo
    from detectron2.utils.collect_env import collect_env_info

    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert cfg.MODEL.MASK_ON
    lazy = model_zoo.get_config("common/models/mask_rcnn_fpn.py")
    assert "backbone" in lazy.model
    assert "detectron2" in collect_env_info()


@pytest.mark.skipif(not _is_python_only_build(), reason="detectron2 with a compiled _C is installed")
def test_missing_compiled_op_raises_named_import_error():
    from detectron2.structures.rotated_boxes import pairwise_iou_rotated

    with pytest.raises(ImportError, match="box_iou_rotated"):
        pairwise_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5))


@pytest.mark.skipif(not _is_python_only_build(), reason="detectron2 with a compiled _C is installed")
def test_nms_rotated_without_compiled_op_raises_named_import_error():
    """v0.6 calls torch.ops.detectron2.nms_rotated, which only the compiled _C registers (a bare
    AttributeError before the wheel's patch); batched_nms_rotated goes through it too."""
    from detectron2.layers import batched_nms_rotated, nms_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0], [11.0, 10.0, 4.0, 4.0, 30.0]])
    scores = torch.tensor([0.9, 0.8])
    with pytest.raises(ImportError, match="nms_rotated"):
        nms_rotated(boxes, scores, 0.5)
    with pytest.raises(ImportError, match="nms_rotated"):
        batched_nms_rotated(boxes, scores, torch.tensor([0, 0]), 0.5)


def test_v06_fixes_for_current_stack():
    """Pillow >= 10 (no Image.LINEAR), numpy 2 (no np.int) paths run."""
    from detectron2.data import transforms as T

    img = np.random.RandomState(0).randint(0, 255, (40, 60, 3), dtype=np.uint8)
    out = T.ResizeTransform(40, 60, 20, 30).apply_image(img)
    assert out.shape == (20, 30, 3)
    from detectron2.data.build import print_instances_class_histogram

    print_instances_class_histogram([{"annotations": [{"category_id": 0, "iscrowd": 0}]}], ["a"])


def test_dataset_and_visualizer_run():
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.visualizer import Visualizer

    img = np.zeros((32, 48, 3), dtype=np.uint8)
    inst = Instances((32, 48), pred_boxes=Boxes(torch.tensor([[4.0, 4.0, 20.0, 20.0]])),
                     scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
    out = Visualizer(img).draw_instance_predictions(inst).get_image()
    assert out.shape == (32, 48, 3) and out.sum() > 0
