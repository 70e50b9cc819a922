"""The configs' training loader (build_yolact_train_loader) on stock Detectron2: with our wheel's
MapDataset patch undone in-process, Detectron2's own loader crashes when the mapper rejects an
image (Python >= 3.11) while ours skips it and yields full batches of real instances."""
import copy
import inspect
import sys
import textwrap

import pytest
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.common import MapDataset
from detectron2.structures import BoxMode

from yolact_d2.data import YolactDatasetMapper, build_ssd_augmentation
from yolact_d2.data.shapes import generate_shapes_dataset, register_shapes

# pycocotools on numpy 2 warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def _upstream_getitem():
    """MapDataset.__getitem__ as upstream Detectron2 (v0.6 and main) writes it: undo the one-line
    fix scripts/build_detectron2_wheel.py applies (a stock install already has this code)."""
    src = textwrap.dedent(inspect.getsource(MapDataset.__getitem__))
    src = src.replace("self._rng.sample(sorted(self._fallback_candidates), k=1)",
                      "self._rng.sample(self._fallback_candidates, k=1)")
    namespace = dict(vars(sys.modules[MapDataset.__module__]))
    exec(compile(src, "<upstream MapDataset.__getitem__>", "exec"), namespace)
    return namespace["__getitem__"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """4 images: 3 the mapper always rejects (a box too small to survive), 1 it keeps."""
    root = tmp_path_factory.mktemp("loaders") / "shapes"
    generate_shapes_dataset(root, num_train=2, num_val=1, image_size=64, seed=4)
    good = get_detection_dataset_dicts(register_shapes(root, prefix="test_loaders_shapes")[:1])[0]
    rejected = []
    for i in range(3):
        d = copy.deepcopy(good)
        d["image_id"] = 1000 + i
        d["annotations"] = [dict(bbox=[10, 10, 10.1, 30], bbox_mode=BoxMode.XYXY_ABS, category_id=0, iscrowd=0,
                                 segmentation=[[10, 10, 10.1, 10, 10.1, 30, 10, 30]], id=5)]
        rejected.append(d)
    name = "test_loaders_with_rejects"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: rejected + [good])
    return name, good


def test_config_train_loader_skips_rejected_images_on_stock_detectron2(dataset, monkeypatch):
    name, good = dataset
    monkeypatch.setattr(MapDataset, "__getitem__", _upstream_getitem())
    mapper = YolactDatasetMapper(True, build_ssd_augmentation(size=64), num_classes=4, max_retries=0)
    if sys.version_info >= (3, 11):  # the oracle: the upstream code path fails on these images
        stock = build_detection_train_loader(dataset=DatasetCatalog.get(name), mapper=mapper,
                                             total_batch_size=4, num_workers=0)
        with pytest.raises(TypeError, match="Population must be a sequence"):
            next(iter(stock))

    cfg = LazyConfig.load("configs/common/data/coco.py")
    cfg.dataloader.train.dataset.names = name
    cfg.dataloader.train.mapper.augmentations.size = 64
    cfg.dataloader.train.mapper.max_retries = 0
    cfg.dataloader.train.total_batch_size = 4
    cfg.dataloader.train.num_workers = 0
    _assert_two_full_batches_of(iter(instantiate(cfg.dataloader.train)), good)


def test_yacs_train_loader_skips_rejected_images_on_stock_detectron2(dataset, monkeypatch):
    """The yacs trainer's loader (engine.yacs_trainer) goes through the same loader."""
    from detectron2.config import get_cfg

    from yolact_d2 import add_yolact_config
    from yolact_d2.engine.yacs_trainer import build_yolact_train_loader as build_yacs_train_loader

    name, good = dataset
    monkeypatch.setattr(MapDataset, "__getitem__", _upstream_getitem())
    cfg = get_cfg()
    add_yolact_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.YOLACT.INPUT_SIZE = 64
    cfg.MODEL.YOLACT.NUM_CLASSES = 4
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.DATALOADER.NUM_WORKERS = 0
    _assert_two_full_batches_of(iter(build_yacs_train_loader(cfg)), good)


def _assert_two_full_batches_of(it, good):
    """Two batches of 4 from the loader, each item the one good image (64x64) with its instances."""
    for _ in range(2):
        batch = next(it)
        assert len(batch) == 4
        for x in batch:
            assert x["image_id"] == good["image_id"] and x["image"].shape == (3, 64, 64)
            assert len(x["instances"]) > 0
