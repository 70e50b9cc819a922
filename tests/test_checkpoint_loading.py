"""yolact_d2.engine.checkpoint.YolactCheckpointer through tools/train_net.py and Predictor:
strict --eval-only (random or other-class-count weights are an error, not AP 0), fine-tuning
from init_checkpoint (class layers re-initialised and said so; a file matching nothing is an
error), stale temp files removed, ordinary file modes, class names stored in checkpoints and
used by Predictor, and the from-scratch banner."""
import logging
import os
import socket
import subprocess
import sys

import pytest
import torch

import checkpoint_fixtures as cf
from yolact_d2.checkpoint import WeightsMismatchError
from yolact_d2.engine import YolactCheckpointer


class _Records(logging.Handler):
    """Collects what a logger emits while in a `with` block."""

    def __init__(self, logger):
        super().__init__(logging.DEBUG)
        self.logger, self.messages = logger, []

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)

    def emit(self, record):
        self.messages.append(record.getMessage())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------- strict loading
def test_strict_load_refuses_what_does_not_fit(tmp_path):
    good = tmp_path / "c4.pth"
    YolactCheckpointer(cf.tiny_model(), str(tmp_path)).save("c4")
    random_dict = tmp_path / "random.pth"
    torch.save({"model": {"conv.weight": torch.randn(3, 3), "fc.bias": torch.randn(7)}}, str(random_dict))

    with pytest.raises(WeightsMismatchError) as e:
        YolactCheckpointer(cf.tiny_model(num_classes=2), strict=True).load(str(good))
    msg = str(e.value)
    # the tiny head: 16 channels, 3x3 conv, 6 priors x (classes + 1) outputs
    assert f"weights '{good}' do not fit" in msg
    assert "head.cls_score.weight: checkpoint [30, 16, 3, 3] vs model [18, 16, 3, 3]" in msg
    assert "class count differs" in msg and "train.init_checkpoint" in msg

    with pytest.raises(WeightsMismatchError) as e:
        YolactCheckpointer(cf.tiny_model(), strict=True).load(str(random_dict))
    assert "Missing in the checkpoint: backbone.bottom_up.stem.conv1.weight [4, 3, 7, 7]" in str(e.value)
    assert "Not in the model: conv.weight [3, 3]; fc.bias [7]" in str(e.value)

    model = cf.tiny_model(seed=3)
    YolactCheckpointer(model, strict=True).load(str(good))  # the right config loads, exactly
    saved = torch.load(str(good), weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_resume_is_strict(tmp_path):
    YolactCheckpointer(cf.tiny_model(), str(tmp_path)).save("model_0000004")
    with pytest.raises(WeightsMismatchError, match="cls_score"):
        YolactCheckpointer(cf.tiny_model(num_classes=2), str(tmp_path)).resume_or_load("", resume=True)


# ---------------------------------------------------------------------------------- fine-tuning
def test_init_checkpoint_other_class_count_reinitialises_class_layers_and_says_so(tmp_path):
    src = cf.tiny_model(seed=1)
    YolactCheckpointer(src, str(tmp_path)).save("c4")
    dst = cf.tiny_model(num_classes=2, seed=2)
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    ckpt = YolactCheckpointer(dst, str(tmp_path / "run"))
    with _Records(ckpt.logger) as log:
        ckpt.resume_or_load(str(tmp_path / "c4.pth"), resume=False)
    reinit = {"head.cls_score.weight", "head.cls_score.bias", "semantic_seg_conv.weight", "semantic_seg_conv.bias"}
    assert set(ckpt.reinitialized_keys) == reinit
    for k, v in dst.state_dict().items():
        assert torch.equal(v, fresh[k] if k in reinit else src.state_dict()[k]), k
    (line,) = [m for m in log.messages if "Fine-tuning re-initialisation" in m]
    assert "head.cls_score.weight: checkpoint (30, 16, 3, 3) -> model (18, 16, 3, 3)" in line


def test_init_checkpoint_backbone_only_is_summarised_random_dict_is_an_error(tmp_path):
    src = cf.tiny_model(seed=1)
    backbone = {k: v for k, v in src.state_dict().items() if k.startswith("backbone.bottom_up.")}
    partial = tmp_path / "backbone_only.pth"
    torch.save({"model": backbone}, str(partial))
    dst = cf.tiny_model(seed=2)
    ckpt = YolactCheckpointer(dst, str(tmp_path / "run"))
    with _Records(ckpt.logger) as log:
        ckpt.resume_or_load(str(partial), resume=False)
    n_model = len([k for k in dst.state_dict() if not k.endswith("num_batches_tracked")])
    (summary,) = [m for m in log.messages if "keep their fresh initialisation" in m]
    n_backbone = len([k for k in backbone if not k.endswith("num_batches_tracked")])
    assert f"it filled {n_backbone} of the model's {n_model} keys" in summary
    assert "backbone.lateral_convs.0 (2)" in summary and "head.cls_score (2)" in summary
    assert not any("Some model parameters or buffers are not found" in m for m in log.messages)  # grouped only

    random_dict = tmp_path / "random.pth"
    torch.save({"conv.weight": torch.randn(3, 3)}, str(random_dict))
    with pytest.raises(ValueError, match=f"'{random_dict}' fills none of the model's {n_model}"):
        YolactCheckpointer(cf.tiny_model(), str(tmp_path / "run2")).resume_or_load(str(random_dict), resume=False)


# ---------------------------------------------------------------------------------- files on disk
def test_stale_temp_files_removed_and_ordinary_modes(tmp_path):
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a writer that was killed: its pid is gone
    stale = [
        tmp_path / ".tmp_model_0000009.pth.k2j3",  # older name format (no writer recorded)
        tmp_path / f".tmp_model_0000019.pth@{host}@{dead.pid}@x81k",
        tmp_path / f".tmp_last_checkpoint@{host}@{dead.pid}@q2",
    ]
    live = [
        tmp_path / f".tmp_model_0000029.pth@{host}@{os.getpid()}@z9",  # a save in progress (this process)
        tmp_path / ".tmp_model_0000039.pth@another-host@1@z9",  # another machine's: cannot tell, kept
    ]
    for p in stale + live:
        p.write_bytes(b"\0" * 4096)  # a save killed between mkstemp and os.replace
    keep = tmp_path / "model_0000004.pth"
    keep.write_bytes(b"not ours to delete")
    ckpt = YolactCheckpointer(cf.tiny_model(), str(tmp_path), meta={"thing_classes": ["a", "b", "c", "d"]})
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in live) and keep.exists()
    ckpt.save("model_0000009")
    want = 0o666 & ~_umask()  # what open() gives a new file (0644 under the usual umask 022)
    for name in ("model_0000009.pth", "last_checkpoint"):
        assert (tmp_path / name).stat().st_mode & 0o777 == want, name
    assert torch.load(str(tmp_path / "model_0000009.pth"), weights_only=True)["meta"] == {"thing_classes": ["a", "b", "c", "d"]}


# ---------------------------------------------------------------------------------- train_net
@pytest.fixture(scope="module")
def seeded_checkpoints(tmp_path_factory):
    """A 2-class tiny checkpoint (the config and its dataset have 4) and a random state dict."""
    root = tmp_path_factory.mktemp("ckpts")
    YolactCheckpointer(cf.tiny_model(num_classes=2, seed=1), str(root)).save("c2")
    torch.save({"model": {"conv.weight": torch.randn(3, 3)}}, str(root / "random.pth"))
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "weights,expect",
    [
        ("random.pth", "Missing in the checkpoint: backbone.bottom_up.stem.conv1.weight"),
        ("c2.pth", "head.cls_score.weight: checkpoint [18, 16, 3, 3] vs model [30, 16, 3, 3]"),
    ],
)
def test_eval_only_with_weights_that_do_not_fit_fails(seeded_checkpoints, tmp_path, weights, expect):
    """Was: Detectron2's 'not found in checkpoint' warnings, AP 0.0, exit code 0."""
    path = seeded_checkpoints / weights
    proc = cf.train_net("--eval-only", f"train.output_dir={tmp_path / 'out'}", f"train.init_checkpoint={path}",
                        datasets_root=tmp_path / "datasets")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"train_net.py: error: weights '{path}' do not fit the model" in proc.stderr
    assert expect in proc.stderr
    assert "copypaste" not in proc.stdout + proc.stderr  # nothing was evaluated


@pytest.mark.slow
def test_training_run_banner_meta_modes_and_predictor_names(tmp_path):
    """Two iterations of the tiny config with train.from_scratch_ok=False: the from-scratch banner is
    logged, a stale temp file is removed, checkpoints get ordinary modes and the training set's class
    names, which a Predictor built from the bare model node (no dataset in sight) then uses."""
    from detectron2.data import MetadataCatalog

    from yolact_d2 import Predictor

    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".tmp_model_0000001.pth.abcd"
    stale.write_bytes(b"\0" * 4096)
    proc = cf.train_net(f"train.output_dir={out}", "train.max_iter=2", "train.checkpointer.period=1",
                        "train.from_scratch_ok=False", datasets_root=tmp_path / "datasets")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "TRAINING FROM SCRATCH" in log and "train.from_scratch_ok=True" in log
    assert "convert_imagenet_backbone.py" in log
    assert not stale.exists() and ".tmp_model_0000001.pth.abcd" in log
    assert not list(out.glob(".tmp_*"))
    final = out / "model_final.pth"
    for path in (final, out / "last_checkpoint"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~_umask(), path

    cfg = cf.tiny_cfg()
    names = MetadataCatalog.get("shapes_tiny_train").thing_classes  # the oracle: the registered dataset
    assert len(names) == 4
    assert torch.load(str(final), weights_only=True)["meta"]["thing_classes"] == list(names)
    bare = Predictor(cfg.model, str(final), device="cpu", optimize=False)  # a model node: no dataloader
    assert bare.metadata.thing_classes == list(names)
    without_meta = tmp_path / "no_meta.pth"
    torch.save({"model": torch.load(str(final), weights_only=True)["model"]}, str(without_meta))
    assert Predictor(cfg.model, str(without_meta), device="cpu", optimize=False).metadata.thing_classes == [
        f"class {i}" for i in range(4)
    ]

    # the positive control of the strict --eval-only tests: weights that fit are evaluated
    ok = cf.train_net("--eval-only", f"train.output_dir={tmp_path / 'eval'}", f"train.init_checkpoint={final}",
                      datasets_root=tmp_path / "datasets")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "copypaste: Task: segm" in ok.stdout + ok.stderr


def test_from_scratch_banner_only_where_it_applies():
    """configs/yolact/* with an empty init_checkpoint: the banner, naming the backbone and the fix;
    the shapes configs (train.from_scratch_ok=True), a set init_checkpoint and --resume: silent."""
    from detectron2.config import LazyConfig

    from yolact_d2.tools import train_net

    r50 = LazyConfig.load(os.path.join(cf.REPO, "configs/yolact/yolact_R_50_FPN_550.py"))
    d53 = LazyConfig.load(os.path.join(cf.REPO, "configs/yolact/yolact_D_53_FPN_550.py"))
    cases = [(r50, False), (d53, False), (cf.tiny_cfg(), False), (r50, True)]
    logs = []
    for cfg, resuming in cases:
        with _Records(train_net.logger) as log:
            train_net.warn_if_training_from_scratch(cfg, resuming=resuming)
        logs.append(" ".join(log.messages))
    assert "TRAINING FROM SCRATCH" in logs[0] and "backbone (build_yolact_resnet)" in logs[0]
    assert "resnet50-0676ba61.pth" in logs[0] and "train.init_checkpoint=imagenet_backbone.pth" in logs[0]
    assert "darknet53.pth" in logs[1]
    assert logs[2] == "" and logs[3] == ""
    r50.train.init_checkpoint = "r50_imagenet.pth"
    with _Records(train_net.logger) as log:
        train_net.warn_if_training_from_scratch(r50, resuming=False)
    assert log.messages == []


def test_predictor_uses_the_class_names_stored_in_the_checkpoint(tmp_path):
    """Predictor built from a bare model node (no dataset): names from the checkpoint's meta; a
    meta with another class count is not used (numbered classes instead)."""
    from yolact_d2 import Predictor

    model_node = cf.tiny_cfg().model
    names = ["disc", "box", "wedge", "spark"]
    YolactCheckpointer(cf.tiny_model(), str(tmp_path), meta={"thing_classes": names}).save("named")
    YolactCheckpointer(cf.tiny_model(), str(tmp_path), meta={"thing_classes": names[:3]}).save("three")
    assert Predictor(model_node, str(tmp_path / "named.pth"), device="cpu", optimize=False).metadata.thing_classes == names
    three = Predictor(model_node, str(tmp_path / "three.pth"), device="cpu", optimize=False)
    assert three.metadata.thing_classes == ["class 0", "class 1", "class 2", "class 3"]
