"""yolact_d2.model_zoo in the checkout: names -> the repository's configs/ files, the experiment
list, loaded configs, and a user's config outside the repository that builds on ours.

Oracles: the files on disk under configs/, LazyConfig.load of each file (which configs define
`model` and `train`), and our config changed by hand for the user's config. The installed wheel
is checked in tests/test_install.py.
"""
import os

import pytest
import torch

from detectron2.config import LazyConfig, instantiate

from yolact_d2 import model_zoo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def test_config_files_are_the_checkouts():
    assert model_zoo.configs_root() == CONFIGS  # editable install: configs/ is read in place
    path = os.path.join(CONFIGS, "yolact", "yolact_R_50_FPN_550.py")
    assert model_zoo.get_config_file("yolact/yolact_R_50_FPN_550.py") == path
    assert model_zoo.get_config_file("configs/yolact/yolact_R_50_FPN_550.py") == path
    assert model_zoo.resolve_config_file(path) == path  # a real file is taken as given
    from yolact_d2.tools import benchmark

    assert model_zoo.resolve_config_file(benchmark.DEFAULT_CONFIG) == path


def test_unknown_name_names_close_matches():
    with pytest.raises(model_zoo.ConfigNotFoundError, match=r"Did you mean 'yolact/yolact_R_50_FPN_550.py'"):
        model_zoo.get_config_file("yolact/yolact_R50_FPN_550.py")
    with pytest.raises(RuntimeError, match="not in yolact_d2's model zoo"):  # what Detectron2's raises
        model_zoo.get_config("yolact/missing.py")
    with pytest.raises(FileNotFoundError, match="config file 'nowhere/x.py' does not exist"):
        model_zoo.resolve_config_file("nowhere/x.py")


@pytest.mark.slow
def test_list_configs_are_the_experiments():
    """Every .py under configs/ (except common/ pieces) loaded: listed iff it defines model and train."""
    expected = []
    for folder, _, names in os.walk(CONFIGS):
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, CONFIGS).replace(os.sep, "/")
            if name.endswith(".py") and not rel.startswith("common/"):
                cfg = LazyConfig.load(path)
                if "model" in cfg and "train" in cfg:
                    expected.append(rel)
            elif name.endswith((".yaml", ".yml")) and not name.startswith("Base"):
                expected.append(rel)
    listed = model_zoo.list_configs()
    assert sorted(p for p in listed if p.endswith(".py")) == sorted(p for p in expected if p.endswith(".py"))
    assert sorted(listed) == sorted(expected)
    assert "shapes/small_yolact.py" not in listed  # a piece: a model without train


def test_get_config_loads_the_file():
    cfg = model_zoo.get_config("yolact/yolact_R_101_FPN_400.py")
    ref = LazyConfig.load(os.path.join(CONFIGS, "yolact", "yolact_R_101_FPN_400.py"))
    assert cfg.model.backbone.bottom_up.depth == ref.model.backbone.bottom_up.depth == 101
    assert cfg.model.input_size == ref.model.input_size == 400
    assert dict(cfg.train) == dict(ref.train)


def test_trained_names_the_official_weights():
    with pytest.raises(RuntimeError, match="yolact_base_54_800000.pth"):
        model_zoo.get_config("yolact/yolact_R_101_FPN_550.py", trained=True)


@pytest.mark.parametrize("style", ["get_config", "lazyconfig_load"])
def test_user_config_outside_the_repo_inherits_ours(tmp_path, style):
    from yolact_d2 import Predictor
    from yolact_d2.modeling import set_num_classes

    base = (
        'get_config("shapes/yolact_shapes_tiny.py")'
        if style == "get_config"
        else 'LazyConfig.load(get_config_file("shapes/yolact_shapes_tiny.py"))'
    )
    user = tmp_path / "my_config.py"
    user.write_text(
        "from detectron2.config import LazyConfig\n"
        "from yolact_d2.model_zoo import get_config, get_config_file\n"
        "from yolact_d2.modeling import set_num_classes\n\n"
        f"_base = {base}\n"
        "model, dataloader, optimizer, lr_multiplier, train = (\n"
        "    _base.model, _base.dataloader, _base.optimizer, _base.lr_multiplier, _base.train)\n"
        "set_num_classes(model, 3)\n"
        "train.max_iter = 7\n"
    )
    mine = LazyConfig.load(str(user))
    ours = LazyConfig.load(os.path.join(CONFIGS, "shapes", "yolact_shapes_tiny.py"))
    set_num_classes(ours.model, 3)  # the same changes, by hand
    ours.train.max_iter = 7
    assert set(mine.keys()) == {"model", "dataloader", "optimizer", "lr_multiplier", "train"}
    assert dict(mine.train) == dict(ours.train)
    torch.manual_seed(0)
    got = {k: v.shape for k, v in instantiate(mine.model).state_dict().items()}
    want = {k: v.shape for k, v in instantiate(ours.model).state_dict().items()}
    assert got == want
    predictor = Predictor(str(user), device="cpu", optimize=False)  # the public entry point takes it
    head = predictor.model.head
    assert head.num_classes == 3 and head.cls_score.out_channels == head.num_anchors * 4


def test_predictor_takes_model_zoo_names(tmp_path, monkeypatch):
    """Outside the repository a config is found by its zoo name (with or without "configs/")."""
    from yolact_d2.predictor import load_model_config

    monkeypatch.chdir(tmp_path)
    for name in ("yolact/yolact_R_101_FPN_400.py", "configs/yolact/yolact_R_101_FPN_400.py"):
        _, model = load_model_config(name)
        assert model.input_size == 400 and model.backbone.bottom_up.depth == 101
    with pytest.raises(FileNotFoundError, match="Did you mean 'yolact/yolact_R_101_FPN_400.py'"):
        load_model_config("yolact/yolact_R_101_FPN_40.py")
