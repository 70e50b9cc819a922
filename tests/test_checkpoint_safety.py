"""yolact_d2.checkpoint.safe_load: no weights file runs code, through every entry point
(Predictor, YolactCheckpointer for train init / --resume / --eval-only, both converters, demo,
visualize_predictions, tools/train_net.py); genuine Detectron2 model-zoo pickles still load;
empty, text and truncated files are errors naming the file.

Oracle for "runs nothing": the crafted files do create their marker file when read with plain
`pickle.load` / `torch.load(weights_only=False)` (checked first), and the marker is absent after
each entry point refused them."""
import os
import pickle
from collections import OrderedDict

import cv2
import numpy as np
import pytest
import torch

import checkpoint_fixtures as cf
from yolact_d2.checkpoint import CheckpointFileError, UnsafeCheckpointError, load_checkpoint_file
from yolact_d2.engine import YolactCheckpointer


@pytest.fixture
def crafted(tmp_path):
    """(marker path, crafted .pkl with open(marker, "w"), crafted .pkl with os.system, crafted .pth)."""
    marker = tmp_path / "PWNED"
    pkl_open = tmp_path / "crafted_open.pkl"
    pkl_open.write_bytes(pickle.dumps({"model": {"head.cls_score.weight": cf.WritesFile(marker)}, "__author__": "x"}))
    pkl_shell = tmp_path / "crafted_shell.pkl"
    pkl_shell.write_bytes(pickle.dumps({"blobs": {"conv1_w": cf.RunsShell(marker)}}, protocol=2))
    pth = tmp_path / "crafted.pth"
    torch.save({"model": {"head.cls_score.weight": cf.RunsShell(marker)}}, str(pth))
    return marker, pkl_open, pkl_shell, pth


def test_crafted_files_would_run_code_with_plain_pickle(crafted):
    """The oracle: each crafted file really creates the marker when read unsafely."""
    marker, pkl_open, pkl_shell, pth = crafted
    for read in (
        lambda: pickle.loads(pkl_open.read_bytes()),
        lambda: pickle.loads(pkl_shell.read_bytes()),
        lambda: torch.load(str(pth), weights_only=False),
    ):
        read()
        assert marker.exists()
        marker.unlink()


def test_safe_reader_refuses_crafted_files(crafted):
    marker, *files = crafted
    for path in files:
        with pytest.raises(UnsafeCheckpointError, match=f"refusing to load '{path}'") as e:
            load_checkpoint_file(str(path))
        assert "nothing was executed" in str(e.value).lower()
        assert not marker.exists(), path
    with pytest.raises(UnsafeCheckpointError, match=r"global 'posix\.system'|global 'nt\.system'"):
        load_checkpoint_file(str(files[1]))
    with pytest.raises(UnsafeCheckpointError, match=r"global 'io\.open'|global 'builtins\.open'"):
        load_checkpoint_file(str(files[0]))


def test_entry_points_refuse_crafted_files(crafted, tmp_path):
    from yolact_d2 import Predictor
    from yolact_d2.tools import convert_imagenet_backbone, convert_yolact_weights, demo, visualize_predictions

    marker, pkl_open, pkl_shell, pth = crafted
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8))
    for path in (pkl_open, pkl_shell, pth):
        with pytest.raises(UnsafeCheckpointError, match=str(path)):
            Predictor(cf.TINY, str(path), device="cpu")
        model = cf.tiny_model()
        with pytest.raises(UnsafeCheckpointError, match=str(path)):  # --eval-only / visualize
            YolactCheckpointer(model, strict=True).load(str(path))
        with pytest.raises(UnsafeCheckpointError, match=str(path)):  # train.init_checkpoint
            YolactCheckpointer(model, str(tmp_path / "run")).resume_or_load(str(path), resume=False)
        for tool in (convert_yolact_weights, convert_imagenet_backbone):
            assert tool.main([str(path), str(tmp_path / "never.pth")]) == 1
            assert not (tmp_path / "never.pth").exists()
        with pytest.raises(UnsafeCheckpointError, match=str(path)):
            demo.main(["--config-file", cf.TINY, "--weights", str(path), "--input", str(image), "--device", "cpu"])
        with pytest.raises(UnsafeCheckpointError, match=str(path)):
            visualize_predictions.main(["--config-file", cf.TINY, "--weights", str(path), "--output", str(tmp_path / "v")])
        assert not marker.exists(), path


def test_resume_refuses_a_crafted_last_checkpoint(crafted, tmp_path):
    marker, _, _, pth = crafted
    run = tmp_path / "run"
    run.mkdir()
    os.replace(pth, run / "model_0000009.pth")
    (run / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(UnsafeCheckpointError, match="model_0000009.pth"):  # --resume
        YolactCheckpointer(cf.tiny_model(), str(run)).resume_or_load("", resume=True)
    assert not marker.exists()


@pytest.mark.slow
def test_train_net_refuses_a_crafted_init_checkpoint(crafted, tmp_path):
    marker, _, pkl_shell, _ = crafted
    proc = cf.train_net(f"train.output_dir={tmp_path / 'out'}", f"train.init_checkpoint={pkl_shell}",
                        datasets_root=tmp_path / "datasets")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"train_net.py: error: refusing to load '{pkl_shell}'" in proc.stderr
    assert "posix.system" in proc.stderr or "nt.system" in proc.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------------- genuine files
def _numpy_state(model):
    return OrderedDict((k, v.detach().numpy().copy()) for k, v in model.state_dict().items())


_C2_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


def _caffe2_name(key):
    """Our backbone key -> its Caffe2 / MSRA model-zoo name (written out here, independently of
    Detectron2's converter): stem.conv1 -> conv1 / res_conv1_bn; resN.B.convK -> resN_B_branch2{a,b,c};
    resN.B.shortcut -> resN_B_branch1; .norm.X -> _bn_{s,b,rm,riv}."""
    parts = key[len("backbone.bottom_up."):].split(".")
    if parts[0] == "stem":
        return "conv1_w" if parts[2] == "weight" else f"res_conv1_bn_{_C2_BN[parts[-1]]}"
    stage, block, layer = parts[:3]
    branch = "branch1" if layer == "shortcut" else "branch2" + "abc"[int(layer[-1]) - 1]
    suffix = f"_bn_{_C2_BN[parts[-1]]}" if "norm" in parts else "_w"
    return f"{stage}_{block}_{branch}{suffix}"


@pytest.mark.parametrize("protocol", [2, 4])
def test_detectron2_model_zoo_pkl_loads(tmp_path, protocol):
    """A Detectron2 model-zoo file ({"model": numpy arrays, "__author__"}) fills the model exactly
    (strict, as --eval-only and Predictor load it)."""
    src = cf.tiny_model(seed=1)
    want = src.state_dict()
    zoo = tmp_path / "model_final_zoo.pkl"
    zoo.write_bytes(pickle.dumps({"model": _numpy_state(src), "__author__": "Detectron2 Model Zoo"}, protocol=protocol))
    dst = cf.tiny_model(seed=2)
    YolactCheckpointer(dst, strict=True).load(str(zoo))
    for k, v in dst.state_dict().items():
        assert torch.equal(v, want[k]), k
    from yolact_d2 import Predictor

    pred = Predictor(cf.TINY, str(zoo), device="cpu", optimize=False)
    assert torch.equal(pred.model.head.cls_score.weight, want["head.cls_score.weight"])


def test_caffe2_imagenet_pkl_initialises_the_backbone(tmp_path):
    """An MSRA/Caffe2-style ImageNet .pkl ({"blobs": {res2_0_branch2a_w: array, ...}}) as
    train.init_checkpoint: Detectron2's matching heuristics still rename it onto the backbone."""
    src = cf.tiny_model(seed=1)
    blobs = {
        _caffe2_name(k): v for k, v in _numpy_state(src).items()
        if k.startswith("backbone.bottom_up.") and not k.endswith("num_batches_tracked")
    }
    blobs["conv1_w_momentum"] = np.zeros(1, np.float32)  # dropped by the reader, as Detectron2 does
    path = tmp_path / "R-tiny.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    dst = cf.tiny_model(seed=2)
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    YolactCheckpointer(dst, str(tmp_path / "run")).resume_or_load(str(path), resume=False)
    for k, v in dst.state_dict().items():
        if k.startswith("backbone.bottom_up.") and not k.endswith("num_batches_tracked"):
            assert torch.equal(v, src.state_dict()[k]), k
        else:
            assert torch.equal(v, fresh[k]), k  # FPN, protonet, head: not in the file, left as built


# ---------------------------------------------------------------------------------- bad files
def _bad_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": cf.tiny_model().state_dict()}, str(good))
    data = good.read_bytes()
    zoo = pickle.dumps({"model": {"a": np.zeros(1000, np.float32)}, "__author__": "x"}, protocol=2)
    files = {
        "empty.pth": (b"", "is empty"),
        "empty.pkl": (b"", "is empty"),
        "notes.txt": (b"model: yolact\nlr: 0.01\n", "a text file"),
        "notes.pkl": (b"model: yolact\nlr: 0.01\n", "a text file"),
        "truncated.pth": (data[: len(data) // 2], "truncated or corrupt"),
        "truncated.pkl": (zoo[: len(zoo) // 2], "truncated, corrupt or not a checkpoint"),
    }
    for name, (content, _) in files.items():
        (tmp_path / name).write_bytes(content)
    return {tmp_path / name: what for name, (_, what) in files.items()}


def test_empty_text_truncated_files_name_the_file(tmp_path):
    model = cf.tiny_model()
    for path, what in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointFileError, match=f"'{path}'") as e:
            load_checkpoint_file(str(path))
        assert what in str(e.value), (path.name, str(e.value))
        with pytest.raises(CheckpointFileError, match=f"'{path}'"):  # train.init_checkpoint
            YolactCheckpointer(model).resume_or_load(str(path), resume=False)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint_file(str(tmp_path / "nope.pth"))
    # (tools/train_net.py prints these errors as one line, exit status 1: see the crafted-file test,
    # whose UnsafeCheckpointError is a CheckpointFileError; before, a text file gave `KeyError: 101`.)
