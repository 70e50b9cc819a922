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
    assert type(net[1]) is NaiveSyncBatchNorm and type(net[2][0]) is NaiveSyncBatchNorm
    assert type(net[3]) is FrozenBatchNorm2d
    assert torch.allclose(net(x), ref)
