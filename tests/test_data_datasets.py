"""register_coco_dataset: the class names are in the metadata at registration (read from the json's
categories only, equal to what Detectron2's load_coco_json sets), Predictor and demo.py show them;
a corrupt RLE, an empty annotation list and a wrong image size in the json give errors that name the
file, the image and the annotation."""
import json
import logging
import os
import subprocess
import sys

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from yolact_d2.data import AnnotationError
from yolact_d2.data.datasets import read_coco_categories, register_coco_dataset
from yolact_d2.data.shapes import generate_shapes_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# pycocotools on numpy 2 warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets") / "shapes"
    paths = generate_shapes_dataset(root, num_train=6, num_val=4, image_size=64, seed=2,
                                    kinds=("circle", "rectangle"), rle_fraction=1.0)
    with open(paths["val"][0]) as f:
        coco = json.load(f)
    return dict(paths=paths, coco=coco, image_root=paths["val"][1])


def _write(tmp_path, coco, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(coco) if not isinstance(coco, str) else coco)
    return str(path)


def _categories(n, name=lambda i: f"class {i}"):
    return [dict(id=i + 1, name=name(i), supercategory="x") for i in range(n)]


# ----------------------------------------------------------------------------- categories
@pytest.mark.parametrize("layout", ["first", "last", "nested_key", "key_as_text", "large_unicode"])
def test_read_coco_categories_equals_json_load(tmp_path, monkeypatch, layout):
    from yolact_d2.data import datasets

    full_parses = []
    real = datasets._load_json
    monkeypatch.setattr(datasets, "_load_json", lambda path: full_parses.append(path) or real(path))
    images = [dict(id=1, file_name="a.png", height=4, width=4)]
    cats = _categories(3)
    if layout == "first":
        coco = dict(categories=cats, images=images, annotations=[])
    elif layout == "last":
        coco = dict(images=images, annotations=[], categories=cats)
    elif layout == "nested_key":  # a second "categories" key: the whole file is parsed instead
        coco = dict(info=dict(categories=[1, 2]), images=images, annotations=[], categories=cats)
    elif layout == "key_as_text":  # the word inside strings is no key
        coco = dict(info=dict(description='"categories": [ are below'), images=images, categories=cats)
    else:  # > 64 kB of categories with multi-byte names: the decoded chunk has to grow
        cats = _categories(3000, lambda i: f"категория {i} ✓")
        coco = dict(images=images, categories=cats, annotations=[])
    path = _write(tmp_path, json.dumps(coco, ensure_ascii=False) if layout == "large_unicode" else coco)
    with open(path, encoding="utf-8") as f:
        assert read_coco_categories(path) == json.load(f)["categories"]
    assert full_parses == ([path] if layout == "nested_key" else [])


def test_registration_reads_only_the_categories(tmp_path):
    """The rest of the json is not parsed at registration (here it is broken): that waits until
    the dataset is loaded, where the error names the file."""
    text = json.dumps(dict(categories=_categories(2)))[:-1] + ', "images": [{"id": 1, BROKEN'
    path = _write(tmp_path, text)
    name = register_coco_dataset("test_ds_lazy", path, str(tmp_path))
    assert MetadataCatalog.get(name).thing_classes == ["class 0", "class 1"]
    with pytest.raises(AnnotationError, match=rf"{path}.*is not valid json"):
        DatasetCatalog.get(name)


def test_registered_metadata_equals_detectron2s(shapes, tmp_path):
    """Non-contiguous, unsorted category ids: the same thing_classes and id map as Detectron2's
    load_coco_json sets when it loads the file (the oracle), known before loading."""
    coco = json.loads(json.dumps(shapes["coco"]))
    new_id = {1: 9, 2: 4}
    coco["categories"] = [dict(id=9, name="circle"), dict(id=4, name="rectangle")]
    for ann in coco["annotations"]:
        ann["category_id"] = new_id[ann["category_id"]]
    path = _write(tmp_path, coco)
    name = register_coco_dataset("test_ds_ids", path, shapes["image_root"])
    meta = MetadataCatalog.get(name)
    got = (meta.thing_classes, meta.thing_dataset_id_to_contiguous_id)
    load_coco_json(path, shapes["image_root"], "test_ds_ids_oracle")
    oracle = MetadataCatalog.get("test_ds_ids_oracle")
    assert got == (oracle.thing_classes, oracle.thing_dataset_id_to_contiguous_id) == (
        ["rectangle", "circle"], {4: 0, 9: 1})
    dicts = DatasetCatalog.get(name)  # loading sets the same values again without complaint
    assert len(dicts) == 4 and {a["category_id"] for d in dicts for a in d["annotations"]} <= {0, 1}


@pytest.mark.parametrize("categories, message", [
    ([dict(id=1, name="a"), dict(id=1, name="b")], r"category ids \[1\] appear more than once"),
    ([], "'categories' must be a non-empty list"),
    ([dict(id=1)], "category #0 .* needs an integer 'id' and a string 'name'"),
])
def test_bad_categories_are_named_at_registration(tmp_path, categories, message):
    path = _write(tmp_path, dict(images=[], annotations=[], categories=categories))
    with pytest.raises(AnnotationError, match=rf"{path}.*{message}"):
        register_coco_dataset("test_ds_bad_categories", path, str(tmp_path))


def test_missing_json_registers_without_names(tmp_path, caplog):
    path = str(tmp_path / "later.json")
    with caplog.at_level(logging.WARNING, logger="yolact_d2.data.datasets"):
        name = register_coco_dataset("test_ds_missing", path, str(tmp_path))
    assert "test_ds_missing" in caplog.text and path in caplog.text
    assert MetadataCatalog.get(name).get("thing_classes") is None
    with pytest.raises(FileNotFoundError, match=path):
        DatasetCatalog.get(name)


# ----------------------------------------------------------------------------- Predictor, demo
@pytest.mark.slow
def test_predictor_and_demo_show_the_registered_class_names(shapes, tmp_path):
    """Before: "class 0", "class 1" (the names appeared only once the json was loaded)."""
    import cv2

    from yolact_d2 import Predictor

    config = tmp_path / "two_class.py"
    config.write_text(
        "from detectron2.config import LazyConfig\n"
        "from yolact_d2.data.datasets import register_coco_dataset\n"
        "from yolact_d2.modeling import set_num_classes\n"
        f"_cfg = LazyConfig.load({os.path.join(REPO, 'configs/shapes/yolact_shapes_tiny.py')!r})\n"
        "model, dataloader = _cfg.model, _cfg.dataloader\n"
        "set_num_classes(model, 2)\n"
        f"dataloader.test.dataset.names = register_coco_dataset('test_ds_two_val', "
        f"{shapes['paths']['val'][0]!r}, {shapes['image_root']!r})\n")
    assert Predictor(str(config), device="cpu").metadata.thing_classes == ["circle", "rectangle"]
    image = os.path.join(shapes["image_root"], "000001.png")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/demo.py"), "--config", str(config), "--input", image,
         "--output", str(tmp_path / "out.png"), "--device", "cpu", "--confidence-threshold", "0"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = proc.stdout.split("detections in")[1].split(": ", 1)[1].split("\n")[0]
    names = {part.rsplit(" ", 1)[0] for part in listed.replace(" ...", "").split(", ")}
    assert names and names <= {"circle", "rectangle"}
    assert cv2.imread(str(tmp_path / "out.png")).shape == (64, 64, 3)


def test_predictor_names_for_the_shapes_config_without_generating(tmp_path, monkeypatch):
    from yolact_d2 import Predictor

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    pred = Predictor(os.path.join(REPO, "configs/shapes/yolact_shapes_tiny.py"), device="cpu")
    assert pred.metadata.thing_classes == ["circle", "rectangle", "triangle", "star"]
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- bad json
def _first_rle(coco):
    return next(a for a in coco["annotations"] if isinstance(a["segmentation"], dict))


def _where(coco, ann):
    img = next(i for i in coco["images"] if i["id"] == ann["image_id"])
    return rf"image '{img['file_name']}' \(image_id={img['id']}\), annotation id={ann['id']}"


@pytest.mark.parametrize("counts, message", [
    ("\x7f\x7f bad", "is not a valid compressed RLE string"),
    ("0", r"run lengths cover 0 pixels, but its size 64x64 has 4096"),  # pycocotools: a garbage mask
    ([100, 50], r"run lengths cover 150 pixels, but its size 64x64 has 4096"),
    ([4000, -4, 100], "negative run length"),
])
def test_corrupt_rle_names_file_image_and_annotation(shapes, tmp_path, counts, message):
    coco = json.loads(json.dumps(shapes["coco"]))
    ann = _first_rle(coco)
    ann["segmentation"]["counts"] = counts
    path = _write(tmp_path, coco)
    name = register_coco_dataset(f"test_ds_rle_{abs(hash(message))}", path, shapes["image_root"])
    with pytest.raises(AnnotationError, match=rf"{path}.*{_where(coco, ann)}: corrupt RLE.*{message}"):
        DatasetCatalog.get(name)


def test_wrong_image_size_in_the_json_is_not_blamed_on_the_rle(shapes, tmp_path):
    """The json says 60x64 for a 64x64 image file whose RLE is 64x64: the json's size is wrong."""
    coco = json.loads(json.dumps(shapes["coco"]))
    ann = _first_rle(coco)
    img = next(i for i in coco["images"] if i["id"] == ann["image_id"])
    img["height"] = 60
    path = _write(tmp_path, coco)
    name = register_coco_dataset("test_ds_size", path, shapes["image_root"])
    with pytest.raises(AnnotationError, match=rf"{_where(coco, ann)}: the image file is 64x64 \(height x width\), "
                                              r"as the RLE says, but 'images' gives height=60, width=64"):
        DatasetCatalog.get(name)


def test_empty_annotations_warn_naming_the_file(shapes, tmp_path, caplog):
    coco = dict(shapes["coco"], annotations=[])
    path = _write(tmp_path, coco)
    name = register_coco_dataset("test_ds_empty", path, shapes["image_root"])
    with caplog.at_level(logging.WARNING, logger="yolact_d2.data.datasets"):
        dicts = DatasetCatalog.get(name)
    assert len(dicts) == 4
    assert f"{path!r} has no annotations" in caplog.text and "not to train" in caplog.text
    empty_images = dict(coco, images=[])
    with pytest.raises(AnnotationError, match=rf"{path}.*empty 'images' list"):
        register_coco_dataset("test_ds_no_images", _write(tmp_path, empty_images), shapes["image_root"])
        DatasetCatalog.get("test_ds_no_images")
