"""Dataset checks that run before training or evaluation starts.

Every dataset the config names is loaded up front, so its annotation checks (register_coco_dataset)
fail in the first seconds, not when evaluation starts after hours of training; and its class
count is compared with the model's, which would otherwise train a 4-class model on 2-class data
without a word.
"""
import logging

__all__ = ["DatasetCheckError", "check_datasets"]

logger = logging.getLogger(__name__)


class DatasetCheckError(ValueError):
    """A dataset that does not fit the config (class count, no annotations); the message names it."""


def _dataset_names(cfg, split):
    """The names in dataloader.<split>.dataset.names (a string or a list), [] when there are none."""
    loader = cfg.get("dataloader", {}).get(split)
    dataset = loader.get("dataset") if hasattr(loader, "get") else None
    names = dataset.get("names") if hasattr(dataset, "get") else None
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def _num_classes_keys(model_cfg):
    """The config keys that carry the model's class count, for the error message."""
    keys = ["model.num_classes"]
    for name, node in model_cfg.items():
        if hasattr(node, "keys") and "num_classes" in node:
            keys.append(f"model.{name}.num_classes")
    return keys


def _how_to_fix(model_cfg, n):
    overrides = " ".join(f"{k}={n}" for k in _num_classes_keys(model_cfg))
    return (f"Set the model's class count to {n}: yolact_d2.modeling.set_num_classes(model, {n}) in the "
            f"config (and dataloader.train.mapper.num_classes = {n}), or the overrides {overrides} "
            f"dataloader.train.mapper.num_classes={n}.")


def _check_one(name, split, dicts, num_classes, model_cfg):
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    where = f"Dataset {name!r} (dataloader.{split}.dataset.names" + (
        f", {meta.json_file}" if meta.get("json_file") else "") + ")"
    if not dicts:
        raise DatasetCheckError(f"{where} has no images. Check its annotation file and image_root.")
    if meta.get("evaluator_type") == "flow":
        return  # optical-flow pairs (FlyingChairs, for flow pre-training): no classes, no instances
    classes = meta.get("thing_classes")
    if classes is not None and len(classes) != num_classes:
        raise DatasetCheckError(
            f"{where} has {len(classes)} classes {list(classes)[:10]} but the model is built for "
            f"{num_classes} (model.num_classes={num_classes}). {_how_to_fix(model_cfg, len(classes))}")
    anns = [a for d in dicts for a in d.get("annotations", ())]
    if classes is None:  # registered without class names: the ids used must at least fit
        used = {a.get("category_id") for a in anns}
        bad = sorted(c for c in used if not isinstance(c, int) or not 0 <= c < num_classes)
        if bad:
            raise DatasetCheckError(f"{where} uses category ids {bad[:10]}, outside the model's "
                                    f"0..{num_classes - 1} (model.num_classes={num_classes}).")
        logger.warning(f"{where} has no thing_classes metadata: its class count cannot be compared "
                       f"with the model's {num_classes}.")
    if split == "train" and not any(not a.get("iscrowd", 0) for a in anns):
        raise DatasetCheckError(f"{where} has no (non-crowd) annotations: a set without annotations "
                                "cannot train YOLACT. Add annotations, or use it only for inference.")
    if split == "test" and not anns:
        logger.warning(f"{where} has no annotations: evaluating on it gives no AP.")


def check_datasets(cfg, splits=("train", "test")):
    """Load every dataset named by dataloader.<split>.dataset.names (running their annotation
    checks) and raise DatasetCheckError when one's class count (thing_classes) differs from
    model.num_classes, a train set has no annotations, or dataloader.train.mapper.num_classes
    disagrees with the model. Configs without model.num_classes are not compared."""
    from detectron2.data import DatasetCatalog

    model_cfg = cfg.get("model", {})
    num_classes = model_cfg.get("num_classes") if hasattr(model_cfg, "get") else None
    for split in splits:
        for name in _dataset_names(cfg, split):
            dicts = DatasetCatalog.get(name)
            if num_classes is not None:
                _check_one(name, split, dicts, int(num_classes), model_cfg)
    if num_classes is None or "train" not in splits:
        return
    mapper = cfg.dataloader.train.get("mapper") if "train" in cfg.get("dataloader", {}) else None
    mapper_classes = mapper.get("num_classes") if hasattr(mapper, "get") else None
    if mapper_classes is not None and int(mapper_classes) != int(num_classes):
        raise DatasetCheckError(
            f"dataloader.train.mapper.num_classes={mapper_classes} but model.num_classes={num_classes}; "
            "set both to the dataset's class count.")
