"""The synthetic shapes dataset: deterministic, idempotent, atomic, generated lazily at a
cwd-independent root with ordinary permissions, annotations that match the pixels, and a COCO json
that Detectron2's loader and COCOEvaluator take like COCO."""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO

from yolact_d2.data import shapes as shapes_mod
from yolact_d2.data.shapes import (
    dataset_fingerprint,
    generate_shapes_dataset,
    prepare_shapes,
    register_shapes,
    shapes_default_root,
)

# pycocotools on numpy 2 warns on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

SMALL = dict(num_train=10, num_val=4, image_size=64)


def test_deterministic_for_a_seed(tmp_path):
    generate_shapes_dataset(tmp_path / "a", seed=5, **SMALL)
    generate_shapes_dataset(tmp_path / "b", seed=5, **SMALL)
    generate_shapes_dataset(tmp_path / "c", seed=6, **SMALL)
    fa, fb, fc = (dataset_fingerprint(tmp_path / x) for x in "abc")
    assert fa == fb
    assert fa != fc


def test_idempotent_and_regenerates_on_new_params(tmp_path):
    root = tmp_path / "s"
    paths = generate_shapes_dataset(root, **SMALL)
    json_file = paths["train"][0]
    mtime = os.stat(json_file).st_mtime_ns
    generate_shapes_dataset(root, **SMALL)
    assert os.stat(json_file).st_mtime_ns == mtime  # untouched
    generate_shapes_dataset(root, **dict(SMALL, num_train=3))
    with open(json_file) as f:
        assert len(json.load(f)["images"]) == 3
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary folders left


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "s"
    real = shapes_mod._write_split

    def dying(out_dir, split, *args):
        if split == "val":
            raise KeyboardInterrupt("killed")
        return real(out_dir, split, *args)

    monkeypatch.setattr(shapes_mod, "_write_split", dying)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes_dataset(root, **SMALL)
    assert os.listdir(tmp_path) == []
    # An existing dataset survives a failed regeneration with other parameters.
    monkeypatch.setattr(shapes_mod, "_write_split", real)
    generate_shapes_dataset(root, **SMALL)
    before = dataset_fingerprint(root)
    monkeypatch.setattr(shapes_mod, "_write_split", dying)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes_dataset(root, **dict(SMALL, seed=9))
    assert dataset_fingerprint(root) == before


def test_bad_parameters_are_named(tmp_path):
    with pytest.raises(ValueError, match="hexagonal"):
        generate_shapes_dataset(tmp_path / "x", kinds=("circle", "hexagonal"), **SMALL)
    with pytest.raises(ValueError, match="min_objects"):
        generate_shapes_dataset(tmp_path / "x", min_objects=3, max_objects=2, **SMALL)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "shapes"
    paths = generate_shapes_dataset(root, num_train=40, num_val=8, image_size=96, seed=1, crowd_prob=0.3)
    return root, paths


def test_annotations_match_pixels(dataset):
    import cv2

    _, paths = dataset
    json_file, image_root = paths["train"]
    coco = COCO(json_file)
    kinds = {"list": 0, "dict": 0}
    n_crowd = 0
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        image = cv2.imread(os.path.join(image_root, info["file_name"]))
        assert image.shape == (info["height"], info["width"], 3)
        union = np.zeros(image.shape[:2], np.int32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            kinds[type(ann["segmentation"]).__name__] += 1
            m = coco.annToMask(ann).astype(bool)
            assert m.sum() == ann["area"] > 0
            np.testing.assert_allclose(ann["bbox"], mask_util.toBbox(mask_util.encode(np.asfortranarray(m.astype(np.uint8)))), atol=0.01)
            if ann["iscrowd"]:
                n_crowd += 1
                assert isinstance(ann["segmentation"], dict)
                continue
            union += m
            # An object is painted in one flat colour exactly where its visible mask is.
            pixels = image[m].reshape(-1, 3)
            assert (pixels == pixels[0]).all()
            assert 1 <= ann["category_id"] <= 4
        assert union.max() <= 1  # visible masks of distinct objects do not overlap
    assert kinds["list"] > 0 and kinds["dict"] > 0  # both polygon and RLE paths exist
    assert n_crowd > 0
    with open(paths["val"][0]) as f:
        assert not any(a["iscrowd"] for a in json.load(f)["annotations"])  # no crowds in val


def test_registers_and_evaluates_like_coco(dataset, tmp_path):
    """DatasetCatalog loads it; COCOEvaluator gives AP 100 when predictions are the ground truth."""
    from detectron2.evaluation import COCOEvaluator

    root, _ = dataset
    names = register_shapes(root, prefix="test_shapes_eval")
    assert names == ["test_shapes_eval_train", "test_shapes_eval_val"]
    assert register_shapes(root, prefix="test_shapes_eval") == names  # idempotent
    dicts = DatasetCatalog.get(names[1])
    assert len(dicts) == 8
    assert MetadataCatalog.get(names[1]).thing_classes == ["circle", "rectangle", "triangle", "star"]

    evaluator = COCOEvaluator(names[1], tasks=("bbox", "segm"), distributed=False,
                              output_dir=str(tmp_path), use_fast_impl=False)
    evaluator.reset()
    for d in dicts:
        h, w = d["height"], d["width"]
        anns = [a for a in d["annotations"] if not a["iscrowd"]]
        inst = Instances((h, w))
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
        inst.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.as_tensor([a["category_id"] for a in anns])
        masks = []
        for a in anns:
            segm = a["segmentation"]
            rle = mask_util.merge(mask_util.frPyObjects(segm, h, w)) if isinstance(segm, list) else segm
            masks.append(mask_util.decode(rle))
        inst.pred_masks = torch.as_tensor(np.stack(masks)).bool()
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP"] == pytest.approx(100.0)


def _generate_small(root):
    generate_shapes_dataset(root, **SMALL)
    return dataset_fingerprint(root)


def test_concurrent_generation_is_safe(tmp_path):
    """Several processes (e.g. one per GPU, each loading the config) may generate at once."""
    import multiprocessing as mp

    root = str(tmp_path / "s")
    with mp.get_context("fork").Pool(3) as pool:
        prints = pool.map(_generate_small, [root] * 3)
    assert len(set(prints)) == 1 and prints[0] == dataset_fingerprint(root)
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_prepare_shapes_registers_now_and_generates_on_first_read(tmp_path):
    """Registration writes nothing but knows the class names; the first read generates exactly
    what generate_shapes_dataset writes for the same parameters."""
    root = tmp_path / "lazy"
    names = prepare_shapes(root, prefix="test_lazy_shapes", kinds=("star", "circle"), **SMALL)
    assert names == ["test_lazy_shapes_train", "test_lazy_shapes_val"]
    assert not root.exists() and os.listdir(tmp_path) == []
    meta = MetadataCatalog.get("test_lazy_shapes_val")
    assert meta.thing_classes == ["star", "circle"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}
    dicts = DatasetCatalog.get("test_lazy_shapes_val")
    assert len(dicts) == SMALL["num_val"]
    generate_shapes_dataset(tmp_path / "eager", kinds=("star", "circle"), **SMALL)
    assert dataset_fingerprint(root) == dataset_fingerprint(tmp_path / "eager")
    # Reading again (or re-registering the same) neither regenerates nor re-registers.
    mtime = os.stat(root / "generation.json").st_mtime_ns
    assert prepare_shapes(root, prefix="test_lazy_shapes", kinds=("star", "circle"), **SMALL) == names
    assert len(DatasetCatalog.get("test_lazy_shapes_train")) == SMALL["num_train"]
    assert os.stat(root / "generation.json").st_mtime_ns == mtime
    # Bad parameters fail at registration, still without writing anything.
    with pytest.raises(ValueError, match="hexagonal"):
        prepare_shapes(tmp_path / "bad", prefix="test_lazy_bad", kinds=("hexagonal",), **SMALL)
    assert not (tmp_path / "bad").exists()


def test_default_root_does_not_depend_on_the_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    roots = set()
    for cwd in (tmp_path, tmp_path / "home"):
        cwd.mkdir(exist_ok=True)
        monkeypatch.chdir(cwd)
        roots.add(shapes_default_root())
    assert roots == {str(tmp_path / "home/.cache/yolact_d2/datasets/shapes")}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert shapes_default_root() == str(tmp_path / "xdg/yolact_d2/datasets/shapes")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    assert shapes_default_root() == str(tmp_path / "d2/shapes")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_generated_files_have_ordinary_permissions(tmp_path, umask):
    """As os.makedirs / open give them (0777 / 0666 minus the umask), not tempfile's 0700 / 0600."""
    old = os.umask(umask)
    try:
        generate_shapes_dataset(tmp_path / "s", **SMALL)
    finally:
        os.umask(old)
    modes = {}
    for dirpath, dirnames, filenames in os.walk(tmp_path / "s"):
        modes[dirpath] = os.stat(dirpath).st_mode & 0o777
        for fn in filenames:
            modes[os.path.join(dirpath, fn)] = os.stat(os.path.join(dirpath, fn)).st_mode & 0o777
    dirs = {p for p in modes if os.path.isdir(p)}
    assert len(dirs) == 4 and len(modes) - len(dirs) == SMALL["num_train"] + SMALL["num_val"] + 3
    assert {modes[p] for p in dirs} == {0o777 & ~umask}
    assert {m for p, m in modes.items() if p not in dirs} == {0o666 & ~umask}
