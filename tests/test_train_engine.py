"""Training helpers (yolact_d2.engine): checkpoints, class-count fine-tuning, overrides, data stream,
LR schedule, NaN guard, sync BN. Small and fast: a tiny real Yolact where a model is needed."""
import glob
import os

import pytest
import torch
from torch import nn

from detectron2.config import LazyConfig, instantiate
from detectron2.layers import NaiveSyncBatchNorm

from yolact_d2.engine import (
    NonFiniteLossError,
    StreamDataset,
    StreamSampler,
    UnknownConfigKeyError,
    YolactCheckpointer,
    YolactTrainer,
    apply_overrides,
    convert_sync_batchnorm,
    yolact_lr_multiplier,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small_model_cfg(num_classes=4):
    cfg = LazyConfig.load(os.path.join(REPO, "configs/shapes/small_yolact.py"))
    m = cfg.model
    m.backbone.bottom_up.stem.out_channels = 4
    for i, stage in enumerate(m.backbone.bottom_up.stages):
        stage.in_channels = 4 * (2 ** max(i - 1, 0))
        stage.out_channels = 4 * (2**i)
    m.backbone.out_channels = 8
    m.protonet.in_channels = m.protonet.conv_dims = m.head.in_channels = 8
    m.protonet.num_prototypes = m.head.num_prototypes = 4
    m.input_size = 64
    m.num_classes = m.head.num_classes = m.criterion.num_classes = num_classes
    return cfg


# ---------------------------------------------------------------------------------- checkpoints
def test_atomic_save_never_leaves_half_written_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    ckpt = YolactCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000009")
    good = (tmp_path / "model_0000009.pth").read_bytes()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"

    # A save that dies half-way (here torch.save raising after writing some bytes, as a kill would
    # stop it) leaves the previous files untouched and no temporary file behind.
    def dying_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", dying_save)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000009")
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000019")
    assert (tmp_path / "model_0000009.pth").read_bytes() == good
    assert not (tmp_path / "model_0000019.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert glob.glob(str(tmp_path / ".tmp_*")) == []


def test_finetune_other_class_count_reinitialises_only_class_layers(tmp_path):
    torch.manual_seed(0)
    src = instantiate(_small_model_cfg(num_classes=4).model)
    YolactCheckpointer(src, str(tmp_path)).save("src")
    torch.manual_seed(1)
    dst = instantiate(_small_model_cfg(num_classes=2).model)
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    ckpt = YolactCheckpointer(dst)
    ckpt.load(str(tmp_path / "src.pth"))
    expected = {"head.cls_score.weight", "head.cls_score.bias", "semantic_seg_conv.weight", "semantic_seg_conv.bias"}
    assert set(ckpt.reinitialized_keys) == expected
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    for k, v in dst_sd.items():
        if k in expected:
            assert torch.equal(v, fresh[k]), k  # left at its fresh initialisation
        else:
            assert torch.equal(v, src_sd[k]), k  # everything else loaded


def test_shape_mismatch_outside_class_layers_is_an_error(tmp_path):
    src = instantiate(_small_model_cfg().model)
    YolactCheckpointer(src, str(tmp_path)).save("src")
    cfg = _small_model_cfg()
    cfg.model.protonet.num_prototypes = cfg.model.head.num_prototypes = 6
    dst = instantiate(cfg.model)
    with pytest.raises(ValueError, match=r"protonet\..*checkpoint \(4, 8, 1, 1\) vs model \(6, 8, 1, 1\)"):
        YolactCheckpointer(dst).load(str(tmp_path / "src.pth"))


# ---------------------------------------------------------------------------------- overrides
def test_unknown_override_key_names_key_and_close_matches():
    cfg = LazyConfig.load(os.path.join(REPO, "configs/shapes/small_yolact.py"))
    cfg.train = {"max_iter": 10, "device": "cpu"}
    with pytest.raises(UnknownConfigKeyError, match=r"'train.max_iters'.*Did you mean: train.max_iter"):
        apply_overrides(cfg, ["train.max_iters=5"])
    with pytest.raises(UnknownConfigKeyError, match=r"'model.protonett' does not exist"):
        apply_overrides(cfg, ["model.protonett.conv_dims=3"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(cfg, ["train.max_iter"])
    # Known keys, and constructor arguments left at their default in the config, are accepted.
    apply_overrides(cfg, ["train.max_iter=5", "model.criterion.masks_to_train=7"])
    assert cfg.train.max_iter == 5 and cfg.model.criterion.masks_to_train == 7


# ---------------------------------------------------------------------------------- data stream
def _identity_mapper_with_rng(d):
    import numpy as np

    return {"idx": d["idx"], "aug": float(np.random.rand()), "taug": float(torch.rand(1))}


def test_stream_is_a_function_of_seed_and_position():
    data = [{"idx": i} for i in range(7)]
    a = StreamDataset(data, _identity_mapper_with_rng, seed=3)
    b = StreamDataset(data, _identity_mapper_with_rng, seed=3)
    torch.manual_seed(123)  # global RNG state must not matter
    first = [a[k] for k in range(20)]
    torch.manual_seed(999)
    assert [b[k] for k in range(19, -1, -1)][::-1] == first  # any order, same samples
    # each epoch of 7 positions is a permutation of the dataset
    assert sorted(x["idx"] for x in first[:7]) == list(range(7))
    assert [x["idx"] for x in first[:7]] != [x["idx"] for x in first[7:14]]
    # The mapper's global RNG use is isolated: the caller's numpy state is unchanged.
    import numpy as np

    np.random.seed(0)
    before = np.random.rand()
    np.random.seed(0)
    a[5]
    assert np.random.rand() == before


def test_stream_sampler_ranks_partition_the_single_process_stream():
    import itertools

    single = list(itertools.islice(iter(StreamSampler(start=12, rank=0, world_size=1)), 8))
    r0 = list(itertools.islice(iter(StreamSampler(start=12, rank=0, world_size=2)), 4))
    r1 = list(itertools.islice(iter(StreamSampler(start=12, rank=1, world_size=2)), 4))
    assert sorted(r0 + r1) == single == list(range(12, 20))


# ---------------------------------------------------------------------------------- schedule
def test_lr_schedule_matches_official_formula():
    base, init, until, steps, max_iter = 1e-3, 1e-4, 500, (2000, 3000), 4000
    sched = yolact_lr_multiplier(base, max_iter, steps, 0.1, init, until)

    def official(it):  # official train.py set_lr logic
        lr = base
        if it <= until:
            lr = (base - init) * (it / until) + init
        k = sum(it >= s for s in steps)
        return lr if k == 0 else base * 0.1**k

    for it in (0, 1, 250, 499, 500, 501, 1999, 2000, 2500, 3000, 3999):
        assert sched(it / max_iter) * base == pytest.approx(official(it), rel=1e-6), it


# ---------------------------------------------------------------------------------- NaN guard
class _ToyLossModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.poison = None

    def forward(self, batch):
        out = {"loss_box": (self.w**2).sum(), "loss_cls": self.w.sum().abs()}
        if self.poison:
            out[self.poison] = out[self.poison] * float("nan")
        return out


def test_nan_guard_names_iteration_and_term_and_skips_the_step():
    model = _ToyLossModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = YolactTrainer(model, [[{}]] * 100, opt)
    trainer.register_hooks([])
    trainer.train(0, 3)  # three good steps
    weights = model.w.detach().clone()
    model.poison = "loss_cls"
    trainer = YolactTrainer(model, [[{}]] * 100, opt)
    with pytest.raises(NonFiniteLossError, match=r"loss_cls became NaN/inf at iteration 3"):
        trainer.train(3, 6)
    assert torch.equal(model.w.detach(), weights)  # no optimizer step with the bad loss


def test_amp_on_cpu_is_refused_with_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: AMP is allowed")
    model = _ToyLossModel()
    with pytest.raises(ValueError, match="train.amp.enabled=False"):
        YolactTrainer(model, [[{}]], torch.optim.SGD(model.parameters(), lr=0.1), amp=True)


def test_amp_dtype_is_checked_by_name():
    model = _ToyLossModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"train.amp.dtype must be one of .*'bfloat16'.*got 'half'"):
        YolactTrainer(model, [[{}]], opt, amp_dtype="half")
    trainer = YolactTrainer(model, [[{}]], opt, amp_dtype="bfloat16")  # amp off: no scaler, any machine
    assert trainer.amp_dtype == torch.bfloat16 and trainer.grad_scaler is None


# ---------------------------------------------------------------------------------- sync BN
def test_convert_sync_batchnorm_cpu_keeps_state_and_frozen_bn():
    from detectron2.layers import FrozenBatchNorm2d

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)), FrozenBatchNorm2d(4))
    with torch.no_grad():
        net[1].running_mean.fill_(0.5)
    x = torch.randn(2, 3, 8, 8)
    net.eval()
    ref = net(x)
    net = convert_sync_batchnorm(net, "cpu")
    assert isinstance(net[1], NaiveSyncBatchNorm) and isinstance(net[2][0], NaiveSyncBatchNorm)
    assert type(net[3]) is FrozenBatchNorm2d
    assert torch.allclose(net(x), ref)


# ---------------------------------------------------------------------------------- override types
def test_override_of_the_wrong_type_names_key_value_and_type():
    from yolact_d2.engine import ConfigOverrideError

    def config():
        cfg = LazyConfig.load(os.path.join(REPO, "configs/shapes/small_yolact.py"))
        cfg.train = {"max_iter": 10, "device": "cpu", "sync_bn": False}
        return cfg

    cases = {
        "train.max_iter=ten": r"train.max_iter must be an integer \(it is 10 in the config\), got the str 'ten'",
        "train.max_iter=1e3": r"train.max_iter must be an integer .* got the float 1000.0",
        "train.sync_bn=1": r"train.sync_bn must be true or false",
        # a constructor default not written in the config is checked against the default's type
        "model.criterion.masks_to_train=many": r"model.criterion.masks_to_train must be an integer \(it is 100",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigOverrideError, match=message):
            apply_overrides(config(), [override])
    cfg = apply_overrides(config(), ["train.max_iter=12", "train.device=cuda", "model.criterion.box_weight=2"])
    assert cfg.train.max_iter == 12 and cfg.model.criterion.box_weight == 2


# ---------------------------------------------------------------------------------- lr and steps
def test_steps_as_fractions_follow_max_iter_and_absolute_steps_stay():
    from yolact_d2.engine.schedule import linear_scaled_lr, resolve_steps

    assert resolve_steps((3 / 4, 11 / 12), 1200) == [900, 1100]  # the main job's schedule
    assert resolve_steps((3 / 4, 11 / 12), 600) == [450, 550]
    assert resolve_steps((280000, 600000, 700000, 750000), 800000) == [280000, 600000, 700000, 750000]
    assert resolve_steps((280000, 600000), 300000) == [280000]  # past max_iter: never happens
    with pytest.raises(ValueError, match=r"1.5 is neither a fraction"):
        resolve_steps((1.5,), 100)
    with pytest.raises(ValueError, match="must increase"):
        resolve_steps((0.9, 0.5), 100)
    assert linear_scaled_lr(1e-3, 8) == 8e-3 and linear_scaled_lr(1.25e-4, 8) == 1e-3
    # The fractional schedule equals the absolute one it stands for, at every iteration.
    frac = yolact_lr_multiplier(8e-3, 1200, (3 / 4, 11 / 12), 0.1, 1e-4, 100)
    absolute = yolact_lr_multiplier(8e-3, 1200, (900, 1100), 0.1, 1e-4, 100)
    assert all(frac(i / 1200) == absolute(i / 1200) for i in range(1200))


def test_shapes_config_resolves_to_the_same_lr_and_steps(tmp_path, monkeypatch):
    from yolact_d2.engine.schedule import resolve_steps
    from yolact_d2.tools.train_net import load_config

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))  # the config generates the shapes set
    cfg = load_config(os.path.join(REPO, "configs/shapes/yolact_shapes.py"), [])
    assert cfg.optimizer.lr == 8e-3 and cfg.lr_multiplier.base_lr == 8e-3
    assert resolve_steps(cfg.lr_multiplier.steps, cfg.lr_multiplier.max_iter) == [900, 1100]
    cfg = load_config(os.path.join(REPO, "configs/shapes/yolact_shapes.py"),
                      ["dataloader.train.total_batch_size=2", "train.max_iter=400"])
    assert cfg.optimizer.lr == 2e-3
    assert resolve_steps(cfg.lr_multiplier.steps, cfg.lr_multiplier.max_iter) == [300, 367]


# ---------------------------------------------------------------------------------- divergence
class _ScriptedLossModel(nn.Module):
    """loss_box = |w|^2 (falls under SGD), loss_mask = a constant (stuck), times `scale[i]` at call i."""

    def __init__(self, scales=()):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.scales = dict(scales)
        self.calls = 0

    def forward(self, batch):
        s = self.scales.get(self.calls, 1.0)
        self.calls += 1
        return {"loss_box": (self.w**2).sum() * s, "loss_mask": torch.tensor(5.0) + 0 * self.w.sum()}


def test_a_step_that_makes_weights_non_finite_stops_before_the_hooks():
    model = _ToyLossModel()
    with torch.no_grad():
        model.w.fill_(10.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e38)  # 10 - 1e38 * 21 overflows float32 to -inf
    trainer = YolactTrainer(model, [[{}]] * 10, opt)
    with pytest.raises(NonFiniteLossError, match=r"step at iteration 0 made 1 weight\(s\) NaN/inf \(w\)"):
        trainer.train(0, 3)
    assert trainer.diverged


def test_diverged_checkpoints_are_withdrawn_and_the_last_good_one_tagged(tmp_path, caplog):
    from detectron2.engine import hooks

    from yolact_d2.engine import DivergenceSafeCheckpointer

    # Forwards 0..3 fine, forward 4 NaN: the state saved after step 3 is the diverged one.
    model = _ScriptedLossModel({4: float("nan")})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = YolactTrainer(model, [[{}]] * 100, opt)
    ckpt = YolactCheckpointer(model, str(tmp_path), trainer=trainer)
    trainer.register_hooks([DivergenceSafeCheckpointer(ckpt, period=2)])
    with pytest.raises(NonFiniteLossError, match="loss_box became NaN/inf at iteration 4"):
        trainer.train(0, 10)
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint", "model_0000001.pth", "model_0000003.pth.diverged"
    ]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"

    # An exploding (finite) loss: a loud warning, and the checkpoints after it count as diverged too.
    model = _ScriptedLossModel({3: 1e5, 4: 1e5, 5: float("inf")})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = tmp_path / "explode"
    trainer = YolactTrainer(model, [[{}]] * 100, opt)
    ckpt = YolactCheckpointer(model, str(out), trainer=trainer)
    trainer.register_hooks([DivergenceSafeCheckpointer(ckpt, period=1)])
    with pytest.raises(NonFiniteLossError):
        trainer.train(0, 10)
    assert "total loss" in caplog.text and "iteration 3 is more than 10000x its first value" in caplog.text
    assert trainer.last_sane_iter == 2
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(f for f in os.listdir(out) if f.endswith(".diverged")) == [
        f"model_000000{i}.pth.diverged" for i in (2, 3, 4)
    ]
    # a hooks.PeriodicCheckpointer would have left model_0000004.pth as the one to resume from
    assert issubclass(DivergenceSafeCheckpointer, hooks.PeriodicCheckpointer)


# ---------------------------------------------------------------------------------- health
@pytest.mark.slow
def test_dead_prototypes_warning_with_hand_set_dead_channels(caplog):
    import itertools

    from detectron2.data.detection_utils import annotations_to_instances

    from yolact_d2.engine import TrainingHealthHook

    torch.manual_seed(0)
    model = instantiate(_small_model_cfg().model)
    # 3 of the 4 prototype channels get a bias no input can overcome: exactly 0 after the ReLU.
    with torch.no_grad():
        model.protonet.proto_pred.bias.copy_(torch.tensor([-1e6, 1e6, -1e6, -1e6]))
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    inst = annotations_to_instances([{"bbox": [8, 8, 40, 40], "bbox_mode": 0, "category_id": 1,
                                      "segmentation": [[8, 8, 40, 8, 40, 40, 8, 40]]}], (64, 64), mask_format="bitmask")
    batch = [{"image": image, "instances": inst, "height": 64, "width": 64}] * 2
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights (and the dead channels) stay
    trainer = YolactTrainer(model, itertools.repeat(batch), opt)
    hook = TrainingHealthHook(model.protonet, lr=8e-3, total_batch_size=8, period=2, dead_fraction=0.7, patience=2)
    trainer.register_hooks([hook])
    with caplog.at_level("WARNING"):
        trainer.train(0, 4)
    dead = trainer.storage.history("proto_dead_fraction").values()
    assert [(v, it) for v, it in dead] == [(0.75, 0), (0.75, 2)]
    assert "Dead prototypes: 75% of the prototypes are exactly 0" in caplog.text
    assert "optimizer.lr=0.008 is too high for this data at total batch size 8. Try optimizer.lr=0.002" in caplog.text


def test_stuck_mask_loss_warning_only_when_box_loss_falls(caplog):
    from yolact_d2.engine import TrainingHealthHook

    def run(model, lr):
        trainer = YolactTrainer(model, [[{}]] * 100, torch.optim.SGD(model.parameters(), lr=lr))
        trainer.register_hooks([TrainingHealthHook(None, lr=lr, total_batch_size=4, period=2, stuck_after=0.3)])
        caplog.clear()
        with caplog.at_level("WARNING"):
            trainer.train(0, 20)
        return caplog.text

    # loss_mask constant 5, loss_box = |w|^2 shrinking by (1 - 2 lr)^2 each step: warned at 30%.
    assert "Mask loss stuck: 5 at iteration 6, within 2% of its start 5" in run(_ScriptedLossModel(), 0.1)
    # With lr 0 the box loss does not fall either: no mask-loss warning (nothing is learned at all).
    assert "Mask loss stuck" not in run(_ScriptedLossModel(), 0.0)


def test_custom_finetune_config_reads_classes_and_scales_lr_and_steps(tmp_path, monkeypatch):
    from yolact_d2.data.shapes import generate_shapes_dataset
    from yolact_d2.engine.schedule import resolve_steps
    from yolact_d2.tools.train_net import load_config

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    # A 3-class COCO-format set in the layout the config expects ($DETECTRON2_DATASETS/custom).
    generate_shapes_dataset(str(tmp_path / "custom"), num_train=3, num_val=2, image_size=32,
                            kinds=("circle", "star", "triangle"))
    config = os.path.join(REPO, "configs/custom/yolact_R_50_FPN_finetune.py")
    cfg = load_config(config, [])
    assert cfg.optimizer.lr == 1e-3  # 1.25e-4 per image x batch 8: the official lr
    assert resolve_steps(cfg.lr_multiplier.steps, cfg.lr_multiplier.max_iter) == [7500, 9200]
    assert cfg.model.num_classes == cfg.model.head.num_classes == cfg.model.criterion.num_classes == 3
    assert cfg.dataloader.train.mapper.num_classes == 3
    cfg = load_config(config, ["dataloader.train.total_batch_size=4", "train.max_iter=2000"])
    assert cfg.optimizer.lr == 5e-4 and cfg.lr_multiplier.base_lr == 5e-4
    assert resolve_steps(cfg.lr_multiplier.steps, cfg.lr_multiplier.max_iter) == [1500, 1840]
    dicts = instantiate(cfg.dataloader.train.dataset)  # the registered custom_train
    assert len(dicts) == 3 and {a["category_id"] for d in dicts for a in d["annotations"]} <= {0, 1, 2}
