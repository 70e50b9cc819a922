"""The configs shipped with yolact_d2, found the way Detectron2's `model_zoo` finds its own.

    from yolact_d2 import model_zoo
    path = model_zoo.get_config_file("yolact/yolact_R_50_FPN_550.py")  # a real file
    cfg = model_zoo.get_config("yolact/yolact_R_50_FPN_550.py")         # a loaded LazyConfig
    model_zoo.list_configs()                                             # ["shapes/yolact_shapes.py", ...]

Names are relative to the repository's `configs/`. In a checkout (editable install) that folder is
read in place, so edits show at once; a wheel (`pip install .`) carries a copy in
`yolact_d2/configs`, made by setup.py at build time (as Detectron2 copies its configs into
`detectron2/model_zoo/configs`). Relative imports between configs work from either place.

A config of your own, anywhere, can build on ours:

    # my_config.py
    from yolact_d2.model_zoo import get_config
    from yolact_d2.modeling import set_num_classes

    _base = get_config("yolact/yolact_R_50_FPN_550.py")  # "_": not itself part of the config
    model, dataloader, optimizer, lr_multiplier, train = (
        _base.model, _base.dataloader, _base.optimizer, _base.lr_multiplier, _base.train)
    set_num_classes(model, 3)
    train.output_dir = "./output/my_model"
"""
import ast
import difflib
import os
from typing import List

__all__ = ["get_config_file", "get_config", "list_configs", "configs_root", "resolve_config_file", "ConfigNotFoundError"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(_PACKAGE_DIR)
CONFIG_EXTENSIONS = (".py", ".yaml", ".yml")

# yolact_d2 hosts no trained weights; these are the official YOLACT checkpoints (dbolya/yolact
# README) that the configs reproduce. Predictor and convert_yolact_weights read them directly.
OFFICIAL_WEIGHTS = {
    "yolact/yolact_R_50_FPN_550.py": "yolact_resnet50_54_800000.pth",
    "yolact/yolact_R_101_FPN_550.py": "yolact_base_54_800000.pth",
    "yolact/yolact_R_101_FPN_400.py": "yolact_im400_54_800000.pth",
    "yolact/yolact_R_101_FPN_700.py": "yolact_im700_54_800000.pth",
    "yolact/yolact_D_53_FPN_550.py": "yolact_darknet53_54_800000.pth",
    "yolact/yolact_plus_R_50_FPN_550.py": "yolact_plus_resnet50_54_800000.pth",
    "yolact/yolact_plus_R_101_FPN_550.py": "yolact_plus_base_54_800000.pth",
}


class ConfigNotFoundError(FileNotFoundError, RuntimeError):
    """No such config in the model zoo (a RuntimeError too, like Detectron2's model_zoo raises)."""


def configs_root() -> str:
    """The folder the config names are relative to: the checkout's configs/, else the installed copy."""
    checkout_configs = os.path.join(_CHECKOUT, "configs")
    if os.path.isfile(os.path.join(_CHECKOUT, "setup.py")) and os.path.isdir(checkout_configs):
        return checkout_configs
    packaged = os.path.join(_PACKAGE_DIR, "configs")
    if os.path.isdir(packaged):
        return packaged
    raise ConfigNotFoundError(
        f"yolact_d2 has no configs: neither {packaged} (an installed wheel's copy) nor a checkout's "
        f"configs/ next to {_PACKAGE_DIR} exists. Reinstall yolact_d2 (`pip install --no-build-isolation .` "
        "from the repository) or pass the path of a config file."
    )


def _normalise(config_path: str) -> str:
    name = os.fspath(config_path).replace(os.sep, "/").lstrip("/")
    return name[len("configs/"):] if name.startswith("configs/") else name  # "configs/yolact/..." too


def _all_config_files(root: str) -> List[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in files:
            if name.endswith(CONFIG_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(found)


def get_config_file(config_path: str) -> str:
    """The real path of a shipped config, e.g. "yolact/yolact_R_50_FPN_550.py" (a leading
    "configs/" is accepted). An unknown name raises ConfigNotFoundError with the closest names."""
    root = configs_root()
    name = _normalise(config_path)
    path = os.path.join(root, *name.split("/"))
    if name.endswith(CONFIG_EXTENSIONS) and os.path.isfile(path):
        return path
    known = _all_config_files(root)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigNotFoundError(
        f"'{config_path}' is not in yolact_d2's model zoo ({root}).{hint} "
        "yolact_d2.model_zoo.list_configs() lists the experiment configs."
    )


def resolve_config_file(config: str) -> str:
    """A command-line --config value: an existing file as given, else a model-zoo name."""
    if os.path.isfile(config):
        return config
    try:
        return get_config_file(config)
    except ConfigNotFoundError as e:
        raise ConfigNotFoundError(f"config file '{config}' does not exist, and {e}") from None


def get_config(config_path: str, trained: bool = False):
    """A shipped config, loaded: a LazyConfig (omegaconf DictConfig) for .py files, a yacs CfgNode
    with yolact_d2's keys for .yaml files (Detectron2's `model_zoo.get_config` does the same).

    trained=True: yolact_d2 hosts no weights, so this raises an error that names the official
    YOLACT checkpoint for the config (pass that file to `Predictor` or convert it).
    """
    path = get_config_file(config_path)
    if trained:
        official = OFFICIAL_WEIGHTS.get(_normalise(config_path))
        where = (
            f"the official YOLACT checkpoint for this config is {official} (links in the dbolya/yolact README); "
            "pass it to yolact_d2.Predictor(config, weights=...) or convert it with "
            "`python -m yolact_d2.tools.convert_yolact_weights` and set train.init_checkpoint"
            if official
            else "there is no published checkpoint for this config"
        )
        raise RuntimeError(f"yolact_d2's model zoo hosts no trained weights: {where}.")
    if path.endswith(".py"):
        from detectron2.config import LazyConfig

        return LazyConfig.load(path)
    from detectron2.config import get_cfg

    try:
        from yolact_d2.config import add_yolact_config
    except ImportError as e:
        raise ImportError(f"'{config_path}' is a yacs config, and this yolact_d2 has no add_yolact_config: {e}") from e
    cfg = get_cfg()
    add_yolact_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def _binds_model_and_train(path: str) -> bool:
    """Whether a LazyConfig file defines top-level `model` and `train` (an experiment, not a piece)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names.add(n.id)
    return {"model", "train"} <= names


def list_configs() -> List[str]:
    """Names of the experiment configs (those that define `model` and `train`, and the yacs YAML
    files other than `Base-*` ones), for get_config / get_config_file / --config-file."""
    root = configs_root()
    out = []
    for name in _all_config_files(root):
        base = name.rsplit("/", 1)[-1]
        if name.endswith(".py"):
            if _binds_model_and_train(os.path.join(root, *name.split("/"))):
                out.append(name)
        elif not base.startswith("Base"):
            out.append(name)
    return out
