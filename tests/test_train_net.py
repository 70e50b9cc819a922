"""tools/train_net.py end to end on a tiny shapes set (configs/shapes/yolact_shapes_tiny.py), on CPU:
loss goes down, kill -9 + --resume continues bit-identically (2 data workers), 2 gloo processes ==
1 process on the same global batch past warm-up (BN buffers too), unknown config keys, values of the
wrong type, NaN losses and a diverging learning rate give their errors, a dead mask branch is warned
about, and the learning rate / LR steps follow the batch size / max_iter."""
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs/shapes/yolact_shapes_tiny.py")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2datasets")
    old = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    yield str(root)
    if old is None:
        os.environ.pop("DETECTRON2_DATASETS", None)
    else:
        os.environ["DETECTRON2_DATASETS"] = old


def _train_net(output_dir, *opts, resume=False, num_gpus=1, wait=True, flags_last=False):
    cmd = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file", TINY]
    flags = ["--num-gpus", str(num_gpus)] + (["--resume"] if resume else [])
    if num_gpus > 1:
        flags += ["--dist-url", "auto"]
    overrides = [f"train.output_dir={output_dir}", "train.log_period=1", *opts]
    cmd += overrides + flags if flags_last else flags + overrides
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _metrics(output_dir, key="total_loss"):
    """iteration -> value from Detectron2's JSONWriter (the last record of each iteration). Losses
    there are medians over a 20-iteration window; with log_period=1 `lr` is the exact value."""
    out = {}
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            rec = json.loads(line)
            if key in rec:
                out[rec["iteration"]] = rec[key]
    return out


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---------------------------------------------------------------------------------- loss goes down
def test_a_few_iterations_decrease_the_loss_on_a_fixed_batch(datasets_root):
    from detectron2.config import LazyConfig, instantiate
    from detectron2.utils.events import EventStorage

    from yolact_d2.engine import YolactTrainer

    torch.manual_seed(0)
    torch.set_num_threads(1)  # as the config's train.num_threads (no OpenMP spin on a busy CPU)
    cfg = LazyConfig.load(TINY)
    model = instantiate(cfg.model)
    dataset = instantiate(cfg.dataloader.train.dataset)
    mapper = instantiate(cfg.dataloader.train.mapper)
    batch = [mapper(d) for d in dataset[:4]]
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    optimizer.param_groups[0]["lr"] = 5e-3
    trainer = YolactTrainer(model, itertools.repeat(batch), optimizer)
    losses = []
    with EventStorage(0):
        for _ in range(25):
            losses.append({k: v.item() for k, v in model(batch).items()})
            trainer.run_step()
    total = [sum(x.values()) for x in losses]
    assert total[-1] < 0.7 * total[0], total
    for key in ("loss_cls", "loss_mask", "loss_semseg"):
        assert losses[-1][key] < losses[0][key], (key, losses[0], losses[-1])


# ---------------------------------------------------------------------------------- resume
# Two data-loading workers, and a masks_to_train cap that the tiny images exceed (its random subset
# must be drawn the same after a resume).
RESUME_OPTS = ("train.max_iter=16", "train.checkpointer.period=4", "dataloader.train.num_workers=2",
               "model.criterion.masks_to_train=2")


@pytest.fixture(scope="module")
def uninterrupted(datasets_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run_full"))
    _assert_ok(_train_net(out, *RESUME_OPTS))
    return out


def test_kill_9_and_resume_continues_bit_identically(datasets_root, uninterrupted, tmp_path):
    out = str(tmp_path / "run_killed")
    proc = _train_net(out, *RESUME_OPTS, wait=False)
    first = os.path.join(out, "model_0000003.pth")
    deadline = time.time() + 300
    while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    killed_at = max(_metrics(out))
    assert killed_at < 15

    _assert_ok(_train_net(out, *RESUME_OPTS, resume=True))
    full, resumed = _weights(os.path.join(uninterrupted, "model_final.pth")), _weights(os.path.join(out, "model_final.pth"))
    assert resumed["iteration"] == full["iteration"] == 15
    assert resumed["model"].keys() == full["model"].keys()
    for k, v in full["model"].items():  # every parameter and buffer (BN running stats, counters)
        assert torch.equal(resumed["model"][k], v), k
    assert full["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for k, a in full["optimizer"]["state"].items():
        assert torch.equal(a["momentum_buffer"], resumed["optimizer"]["state"][k]["momentum_buffer"]), k
    # Identical final weights need the same data order, augmentation and LR on every iteration;
    # the LR logged at every iteration after the resume is checked directly.
    lr_full, lr_resumed = _metrics(uninterrupted, "lr"), _metrics(out, "lr")
    for it in range(4, 16):
        assert lr_resumed[it] == lr_full[it], it


def test_nan_loss_stops_naming_iteration_and_term_and_keeps_last_good_checkpoint(uninterrupted, tmp_path):
    out = str(tmp_path / "run_nan")
    shutil.copytree(uninterrupted, out)
    good = open(os.path.join(out, "model_final.pth"), "rb").read()
    proc = _train_net(out, "train.max_iter=24", "model.criterion.box_weight=nan", resume=True)
    assert proc.returncode != 0
    assert "loss_box became NaN/inf at iteration 16" in proc.stderr
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_final.pth"
    assert open(os.path.join(out, "model_final.pth"), "rb").read() == good


def test_diverging_lr_stops_named_withdraws_the_diverged_checkpoint_and_resumes(datasets_root, tmp_path):
    out = str(tmp_path / "run_diverged")
    # lr 1e9: the warm-up's step at iteration 1 (lr 2e8) leaves huge but finite weights, checkpointed
    # at iteration 1; the forward pass of iteration 2 is NaN/inf. (Before: a RuntimeError inside
    # F.binary_cross_entropy, and model_0000001.pth the checkpoint --resume took.)
    proc = _train_net(out, "optimizer.lr=1e9", "train.checkpointer.period=1", "train.checkpointer.max_to_keep=5")
    assert proc.returncode != 0
    assert "At iteration 2: Prediction(s) coef, conf, loc, proto" in proc.stderr and "hold NaN/inf" in proc.stderr
    assert "between 0 and 1" not in proc.stderr
    assert sorted(f for f in os.listdir(out) if ".pth" in f) == ["model_0000000.pth", "model_0000001.pth.diverged"]
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000000.pth"
    assert "Withdrew the checkpoint(s) of the diverged state (model_0000001.pth" in proc.stdout
    # --resume with a sane learning rate continues from iteration 1, with that lr (not the checkpoint's).
    proc = _train_net(out, "optimizer.lr=5e-3", "train.checkpointer.period=1", resume=True)
    _assert_ok(proc)
    assert "base learning rate 1e+09 from the checkpoint -> 0.005 from the config" in proc.stdout
    final = _weights(os.path.join(out, "model_final.pth"))
    assert final["iteration"] == 19
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())
    assert max(_metrics(out, "lr").values()) == pytest.approx(5e-3)


def test_dead_mask_branch_is_warned_with_the_likely_cause(datasets_root, tmp_path):
    # lr 0.05 (10x the recipe), warm-up over 20 iterations: the box loss falls, the mask loss stays at
    # its start. The tiny model (8 prototypes) starts with half of them dead and the test lowers the
    # dead-prototype threshold to 0.4 (default 0.9) to see that warning through the same run.
    out = str(tmp_path / "run_dead")
    proc = _train_net(out, "optimizer.lr=0.05", "lr_multiplier.warmup_until=20", "train.max_iter=30",
                      "train.health.period=2", "train.health.dead_fraction=0.4")
    _assert_ok(proc)
    assert "Mask loss stuck" in proc.stdout and "while the box loss fell" in proc.stdout
    assert "Dead prototypes: 50% of the prototypes are exactly 0" in proc.stdout
    assert "optimizer.lr=0.05 is too high for this data at total batch size 4. Try optimizer.lr=0.0125" in proc.stdout
    dead = _metrics(out, "proto_dead_fraction")
    assert sorted(dead) == list(range(0, 30, 2)) and all(0 <= v <= 1 for v in dead.values())


def test_lr_follows_the_batch_size_and_steps_follow_max_iter(datasets_root, tmp_path):
    out = str(tmp_path / "run_schedule")
    _assert_ok(_train_net(out, "train.max_iter=8", "dataloader.train.total_batch_size=2",
                          "lr_multiplier.warmup_until=2", "train.checkpointer.period=100"))
    base, init, until, steps = 1.25e-3 * 2, 1e-4, 2, [6]  # lr_per_image x batch; 3/4 of 8 iterations

    def official(it):  # official train.py set_lr logic
        lr = (base - init) * (it / until) + init if it <= until else base
        k = sum(it >= s for s in steps)
        return lr if k == 0 else base * 0.1**k

    lrs = _metrics(out, "lr")
    assert sorted(lrs) == list(range(8))
    for it, lr in lrs.items():
        assert lr == pytest.approx(official(it), rel=1e-6), it


def test_override_of_the_wrong_type_is_one_clear_line(datasets_root, tmp_path):
    proc = _train_net(str(tmp_path), "train.max_iter=ten")
    assert proc.returncode == 2
    assert ("train_net.py: error: Override 'train.max_iter=ten': train.max_iter must be an integer "
            "(it is 20 in the config), got the str 'ten'.") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_flags_after_the_overrides_are_flags(uninterrupted, tmp_path):
    out = str(tmp_path / "run_flags_last")
    shutil.copytree(uninterrupted, out)
    # `... train.max_iter=17 --resume`: argparse alone made "--resume" an override (an error).
    proc = _train_net(out, *RESUME_OPTS[1:], "train.max_iter=17", resume=True, flags_last=True)
    _assert_ok(proc)
    assert "at iteration 16" in proc.stdout
    assert _weights(os.path.join(out, "model_final.pth"))["iteration"] == 16


def test_unknown_config_key_is_a_clear_error(datasets_root, tmp_path):
    proc = _train_net(str(tmp_path), "train.max_iters=5")
    assert proc.returncode == 2
    assert "Unknown config key 'train.max_iters'" in proc.stderr
    assert "Did you mean: train.max_iter" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------- 2 processes
def test_two_gloo_processes_match_one_process_past_warmup(datasets_root, tmp_path):
    # 8 iterations: past the warm-up (lr_multiplier.warmup_until=5) into the full learning rate.
    opts = ("train.max_iter=8", "train.sync_bn=True", "train.checkpointer.period=100")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _assert_ok(_train_net(one, *opts, num_gpus=1))
    _assert_ok(_train_net(two, *opts, num_gpus=2))
    m1, m2 = _metrics(one), _metrics(two)
    assert sorted(m1) == sorted(m2) == list(range(8))
    assert _metrics(one, "lr")[5] == pytest.approx(5e-3)  # warm-up over (then x0.1 at 3/4 of max_iter)
    for it in m1:  # (window medians of the loss averaged over the workers)
        assert m2[it] == pytest.approx(m1[it], rel=1e-4), (it, m1[it], m2[it])
    w1, w2 = _weights(os.path.join(one, "model_final.pth")), _weights(os.path.join(two, "model_final.pth"))
    assert w1["model"].keys() == w2["model"].keys()
    # Parameters and BN buffers (running mean / var from the all-reduced batch statistics, batch
    # counts). Not bit-equal: gloo sums the two halves' gradients and BN moments in another order
    # than one process sums the whole batch (float32 rounding, ~1e-7 relative per sum), and 8 SGD
    # steps with momentum carry it on. (Detectron2's own NaiveSyncBatchNorm failed this by ~1e-3:
    # a biased running_var; see yolact_d2/engine/sync_bn.py.)
    assert sum("running_var" in k for k in w1["model"]) == sum("num_batches_tracked" in k for k in w1["model"]) > 10
    for k, a in w1["model"].items():
        b = w2["model"][k]
        if a.is_floating_point():
            assert torch.allclose(b, a, rtol=1e-4, atol=1e-5), (k, (b - a).abs().max())
        else:
            assert torch.equal(b, a), k


def test_visualize_predictions_writes_gt_and_prediction_panels(uninterrupted, tmp_path):
    import cv2

    out = str(tmp_path / "vis")
    cmd = [sys.executable, os.path.join(REPO, "tools/visualize_predictions.py"), "--config-file", TINY,
           f"train.output_dir={uninterrupted}", "--output", out, "--num-images", "2", "--scale", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert len(files) == 2
    image = cv2.imread(os.path.join(out, files[0]))
    assert image.shape == (128, 2 * 128 + 8, 3)  # 64x64 val images drawn at scale 2, side by side
