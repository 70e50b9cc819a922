"""check_datasets through tools/train_net.py, on a real 2-class COCO json (a generated shapes set with
two kinds): a class-count mismatch with the model and a bad validation annotation stop the run
before the first iteration, with the dataset, the counts and the fix named; so does a train json
without annotations; --eval-only checks the test split; a matching 2-class config trains."""
import json
import os
import subprocess
import sys

import pytest

from yolact_d2.data.shapes import generate_shapes_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs/shapes/yolact_shapes_tiny.py")
pytestmark = [
    pytest.mark.slow,
    # pycocotools on numpy 2 warns on every decode; not ours to fix.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

CONFIG = """
from detectron2.config import LazyConfig
from yolact_d2.data.datasets import register_coco_dataset
from yolact_d2.modeling import set_num_classes

_cfg = LazyConfig.load({tiny!r})
model, optimizer, lr_multiplier, train, dataloader = (
    _cfg.model, _cfg.optimizer, _cfg.lr_multiplier, _cfg.train, _cfg.dataloader)
dataloader.train.dataset.names = register_coco_dataset("two_train", {train_json!r}, {train_images!r})
dataloader.test.dataset.names = register_coco_dataset("two_val", {val_json!r}, {val_images!r})
dataloader.evaluator.dataset_name = "two_val"
{extra}
"""
MATCHING = "set_num_classes(model, 2)\ndataloader.train.mapper.num_classes = 2"


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_class")
    paths = generate_shapes_dataset(root / "data", num_train=8, num_val=4, image_size=64, seed=0,
                                    kinds=("circle", "rectangle"), max_objects=3)
    with open(paths["val"][0]) as f:
        coco = json.load(f)
    coco["annotations"][1]["category_id"] = 9
    bad_val = root / "bad_val.json"
    bad_val.write_text(json.dumps(coco))
    ann = coco["annotations"][1]
    image = next(img for img in coco["images"] if img["id"] == ann["image_id"])
    where = f"image {image['file_name']!r} (image_id={image['id']}), annotation id={ann['id']}"
    with open(paths["train"][0]) as f:
        unlabelled = dict(json.load(f), annotations=[])
    empty_train = root / "empty_train.json"
    empty_train.write_text(json.dumps(unlabelled))
    return dict(root=root, paths=paths, bad_val=str(bad_val), bad_where=where, empty_train=str(empty_train))


def write_config(two_class, name, extra="", val_json=None, train_json=None):
    (good_train, train_images), (good_val, val_images) = two_class["paths"]["train"], two_class["paths"]["val"]
    path = two_class["root"] / f"{name}.py"
    path.write_text(CONFIG.format(tiny=TINY, train_json=train_json or good_train, train_images=train_images,
                                  val_json=val_json or good_val, val_images=val_images, extra=extra))
    return str(path)


def train_net(config, output_dir, *args):
    cmd = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file", config, *args,
           f"train.output_dir={output_dir}", "train.max_iter=2", "train.log_period=1"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))


def failed_before_training(config, output_dir, *args):
    """Run train_net, which must fail before its first iteration (nothing written); its stderr."""
    proc = train_net(config, output_dir, *args)
    assert proc.returncode != 0
    assert not (output_dir / "metrics.json").exists() and not list(output_dir.glob("model_*.pth"))
    return proc.stderr


def test_class_count_mismatch_stops_before_training(two_class, tmp_path):
    """The tiny config's model has 4 classes; this data has 2 (before: it trained without a word)."""
    err = failed_before_training(write_config(two_class, "mismatch"), tmp_path)
    assert "DatasetCheckError: Dataset 'two_train'" in err
    assert "has 2 classes ['circle', 'rectangle'] but the model is built for 4" in err
    assert "set_num_classes(model, 2)" in err and "model.head.num_classes=2" in err


def test_bad_validation_json_stops_before_training(two_class, tmp_path):
    """Before: the bad category_id in the validation json surfaced only after training finished."""
    err = failed_before_training(write_config(two_class, "bad_val", MATCHING, val_json=two_class["bad_val"]), tmp_path)
    assert (f"{two_class['bad_val']!r}: {two_class['bad_where']}: category_id 9 is not in the "
            "dataset's categories") in err


def test_train_json_without_annotations_is_named(two_class, tmp_path):
    """Before: a bare AssertionError from Detectron2 ("No valid data found in two_train")."""
    err = failed_before_training(write_config(two_class, "empty", MATCHING, train_json=two_class["empty_train"]),
                                 tmp_path)
    assert (f"Dataset 'two_train' (dataloader.train.dataset.names, {two_class['empty_train']}) has no "
            "(non-crowd) annotations: a set without annotations cannot train YOLACT") in err


def test_eval_only_checks_the_test_split(two_class, tmp_path):
    err = failed_before_training(write_config(two_class, "eval_mismatch"), tmp_path, "--eval-only")
    assert "Dataset 'two_val' (dataloader.test.dataset.names" in err
    assert "has 2 classes" in err and "built for 4" in err


def test_matching_class_count_trains(two_class, tmp_path):
    proc = train_net(write_config(two_class, "matching", MATCHING), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "model_final.pth").exists()


def test_flow_pair_datasets_need_no_classes_or_instances(tmp_path):
    """A FlyingChairs train set (flow pre-training) passes check_datasets; an image set without
    annotations still does not."""
    import cv2
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from omegaconf import OmegaConf

    from yolact_d2.data import DatasetCheckError, check_datasets
    from yolact_d2.data.video import register_flying_chairs, write_flo

    data = tmp_path / "FlyingChairs_release" / "data"
    data.mkdir(parents=True)
    for i in (1, 2):
        cv2.imwrite(str(data / f"00001_img{i}.ppm"), np.zeros((3, 4, 3), np.uint8))
    write_flo(data / "00001_flow.flo", np.zeros((3, 4, 2), np.float32))
    name = register_flying_chairs("chairs_check_train", data.parent, split="all")
    cfg = OmegaConf.create(dict(model=dict(num_classes=4), dataloader=dict(train=dict(dataset=dict(names=name)))))
    check_datasets(cfg, splits=("train",))
    DatasetCatalog.register("unlabelled_check_train", lambda: [dict(file_name="a.png", annotations=[])])
    MetadataCatalog.get("unlabelled_check_train").set(thing_classes=["a", "b", "c", "d"])
    cfg.dataloader.train.dataset.names = "unlabelled_check_train"
    with pytest.raises(DatasetCheckError, match="no \\(non-crowd\\) annotations"):
        check_datasets(cfg, splits=("train",))
