"""The LazyConfig dataloader pieces load without side effects, instantiate and yield batches
(shapes) or point at the right Detectron2 builtin datasets (COCO)."""
import json
import os

import pytest
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from yolact_d2.data import YolactDatasetMapper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pycocotools on numpy 2 warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def _files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


@pytest.mark.slow
def test_shapes_config_load_writes_nothing_and_first_read_generates(tmp_path, monkeypatch):
    """Loading a shapes config (also for inference, from any folder) has no side effect; the class
    names are known anyway; reading a split generates the set at a cwd-independent root."""
    cwd, cache, root = tmp_path / "cwd", tmp_path / "cache", tmp_path / "datasets"
    for d in (cwd, cache, root):
        d.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    LazyConfig.load(os.path.join(REPO, "configs/shapes/yolact_shapes.py"))
    meta = MetadataCatalog.get("shapes_val")
    assert meta.json_file == str(cache / "yolact_d2/datasets/shapes/annotations/instances_val.json")
    assert meta.thing_classes == ["circle", "rectangle", "triangle", "star"]

    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    cfg = LazyConfig.load(os.path.join(REPO, "configs/shapes/yolact_shapes.py"))
    assert MetadataCatalog.get("shapes_train").json_file == str(root / "shapes/annotations/instances_train.json")
    assert _files_under(tmp_path) == []  # nothing in the cwd, the cache or the dataset root

    cfg.dataloader.train.total_batch_size = 4
    cfg.dataloader.train.num_workers = 0
    batch = next(iter(instantiate(cfg.dataloader.train)))  # first read: generates
    assert len(batch) == 4
    assert all(x["image"].shape == (3, 128, 128) and len(x["instances"]) > 0 for x in batch)
    with open(root / "shapes/annotations/instances_train.json") as f:
        categories = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    assert meta.thing_classes == [c["name"] for c in categories]  # what registration announced
    assert len(os.listdir(root / "shapes/train")) == 1000
    assert _files_under(cwd) == [] and _files_under(cache) == []
    test_batch = next(iter(instantiate(cfg.dataloader.test)))
    assert test_batch[0]["image"].shape == (3, 128, 128) and "instances" not in test_batch[0]
    assert len(os.listdir(root / "shapes/val")) == 100
    evaluator = instantiate(cfg.dataloader.evaluator)
    assert isinstance(evaluator, COCOEvaluator) and evaluator._use_fast_impl is False


def test_coco_config_points_at_builtin_coco():
    cfg = LazyConfig.load("configs/common/data/coco.py")
    assert cfg.dataloader.train.dataset.names == "coco_2017_train"
    assert cfg.dataloader.test.dataset.names == "coco_2017_val"
    assert {"coco_2017_train", "coco_2017_val"} <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("coco_2017_val").json_file.endswith("coco/annotations/instances_val2017.json")
    mapper = instantiate(cfg.dataloader.train.mapper)
    assert isinstance(mapper, YolactDatasetMapper) and mapper.num_classes == 80
    assert [type(a).__name__ for a in mapper.augmentations.augs] == [
        "RandomPhotometricDistort", "RandomExpand", "RandomSampleCrop", "RandomFlip", "YolactResize"]
    assert cfg.dataloader.evaluator.dataset_name == "coco_2017_val"  # follows the test loader
