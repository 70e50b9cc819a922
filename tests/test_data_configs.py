"""The LazyConfig dataloader pieces load, instantiate and yield batches (shapes) or point at the
right Detectron2 builtin datasets (COCO)."""
import pytest
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from yolact_d2.data import YolactDatasetMapper

# pycocotools on numpy 2 warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.mark.slow
def test_shapes_config_generates_registers_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    cfg = LazyConfig.load("configs/common/data/shapes.py")
    assert (tmp_path / "shapes" / "annotations" / "instances_val.json").exists()
    assert MetadataCatalog.get("shapes_val").json_file.startswith(str(tmp_path))
    cfg.dataloader.train.mapper.augmentations.size = 128
    cfg.dataloader.train.total_batch_size = 4
    cfg.dataloader.train.num_workers = 0
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert len(batch) == 4
    assert all(x["image"].shape == (3, 128, 128) and len(x["instances"]) > 0 for x in batch)
    test_batch = next(iter(instantiate(cfg.dataloader.test)))
    assert test_batch[0]["image"].shape == (3, 128, 128) and "instances" not in test_batch[0]
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
