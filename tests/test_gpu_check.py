"""tools/gpu_check.py: the CPU dry run end to end, the time budget, and the wheelhouse's package logic."""
import json
import os
import re
import subprocess
import sys
import time
from importlib import metadata

import pytest
import torch

from yolact_d2.tools import gpu_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/shapes/yolact_shapes_tiny.py"
BENCH = f"benchmark:{os.path.basename(TINY)}"
STEPS = ("install", "build_extension", "op_tests", "ops_compare", "inference", "train_amp", "train_amp_bf16",
         "ddp_nccl", f"{BENCH} fp32 batch 1", f"{BENCH} fp32 batch 8", f"{BENCH} fp16+bf16 batch 1,8", "onnx_runtimes",
         "benchmark_ops")


def _run(out_dir, *extra):
    cmd = [sys.executable, "tools/gpu_check.py", "--dry-run", "--output", str(out_dir),
           "--inference-configs", TINY, "--benchmark-configs", TINY, "--more-benchmark-configs", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    with open(os.path.join(out_dir, "gpu_check.json")) as f:
        return proc, json.load(f)


@pytest.mark.slow
def test_dry_run_every_step_cpu_parts_pass_cuda_parts_skipped(tmp_path):
    proc, doc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = doc["steps"]
    assert doc["dry_run"] is True and list(steps) == list(STEPS) and doc["not_run_yet"] == []
    assert os.path.getsize(tmp_path / "gpu_check.log") > 0

    # the CUDA-only parts: skipped, with the reason
    assert steps["install"]["status"] == "skipped" and "--wheelhouse" in steps["install"]["reason"]
    assert steps["ddp_nccl"]["status"] == "skipped" and "dry run" in steps["ddp_nccl"]["reason"]
    assert steps["train_amp_bf16"]["status"] == "skipped" and "dry run" in steps["train_amp_bf16"]["reason"]
    op = steps["op_tests"]
    assert op["status"] == "skipped" and "dry run" in op["reason"]
    # oracle: pytest's own collection of the CUDA tests in tests/test_ops.py and tests/test_realtime.py
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                "tests/test_ops.py", "tests/test_realtime.py", "-k", "cuda"], cwd=REPO,
                               capture_output=True, text=True)
    assert any("test_realtime.py::" in ln for ln in collected.stdout.splitlines())
    n_cuda = len([ln for ln in collected.stdout.splitlines() if "::" in ln])
    assert n_cuda > 0 and op["pytest"] == {"passed": 0, "failed": 0, "skipped": n_cuda, "error": 0}
    assert steps[STEPS[-3]]["status"] == "skipped" and "GPU only" in steps[STEPS[-3]]["reason"]
    for name in ("ops_compare", "inference", "train_amp", "benchmark_ops", "onnx_runtimes", *STEPS[-5:-3]):
        assert steps[name]["status"] == "passed", (name, steps[name])
        assert steps[name]["cuda"]["status"] == "skipped" and "dry run" in steps[name]["cuda"]["reason"], name

    # ops_compare: the load of tools/benchmark_ops.py; oracle: a brute-force count of the survivors
    from yolact_d2.tools.benchmark_ops import CONF_THRESH, NUM_CLASSES, make_detection_load

    _, conf = make_detection_load("cpu")
    survivors = sum(1 for row in conf.tolist() if max(row[1:]) > CONF_THRESH)
    fig = steps["ops_compare"]["figures"]
    assert fig["fast_nms"]["candidates"] == [NUM_CLASSES, survivors] and fig["fast_nms"]["detections"] == 100
    assert all(fig[part]["cpu_kernel_equals_pure"] for part in ("fast_nms", "crop_138", "crop_550"))

    # inference: CPU on both sides of the same weights, so the figures are exact (hand-known)
    frames = steps["inference"]["figures"][TINY]["frames"]
    assert len(frames) == 1 and frames[0]["detections_cpu"] == frames[0]["detections_device"] > 0
    assert frames[0]["max_score_diff"] == 0.0 and frames[0]["mean_mask_iou"] == 1.0
    # the fast path's CPU form against the CPU eager path: bit for bit, so exact figures too
    fast = steps["inference"]["figures"][TINY]["fast_path"]
    assert fast["fp32"]["status"] == "passed" and fast["fp32"]["frames"] == frames
    assert fast["fp32"]["cuda_graphs"] is False and fast["fp32"]["captured_sizes"] == []
    assert "CUDA graphs need a CUDA device" in fast["fp32"]["cuda_graphs_off_because"]
    assert fast["fp32"]["pinned_upload"] is False and "no host-to-device upload" in fast["fp32"]["pinned_off_because"]
    assert fast["fp16"]["status"] == "skipped" and "fp16" in fast["fp16"]["reason"] and "CUDA" in fast["fp16"]["reason"]

    # training: 3 CPU iterations without AMP; oracle: the trainer's own metrics.json
    tr = steps["train_amp"]
    logged = [json.loads(ln)["total_loss"] for ln in open(tmp_path / "train_amp" / "metrics.json")
              if "total_loss" in ln]
    assert tr["device"] == "cpu" and tr["amp"] is False and tr["iterations"] == 3
    assert tr["figures"]["total_loss"] == logged and len(logged) == 3
    assert all(0 < x < 1e4 for x in logged)

    # benchmarks: real timings, and the ops table has each case's three paths
    ops = steps["benchmark_ops"]["results"]
    assert {r["path"].split(" (")[0] for r in ops} == {"ours", "pure pytorch", "torchvision batched_nms"}
    assert all(r["median_ms"] > 0 for r in ops)
    one, eight = steps[STEPS[-5]], steps[STEPS[-4]]
    (run,) = one["results"]["runs"]
    assert run["batch"] == 1 and run["dtype"] == "fp32" and one["batch_sizes"] == [1] and one["config"] == TINY
    assert json.dumps(run["contenders"]["yolact_d2"]).count("ms") > 0
    assert [(r["batch"], r["dtype"]) for r in eight["results"]["runs"]] == [(8, "fp32")] and eight["fps"] == {}
    # eager vs the fast path, end to end: the fps summary is the runs' own images/s at batch 1
    fps = one["fps"]
    assert set(fps) == {"yolact_d2", "yolact_d2 fast path"} and all(v > 0 for v in fps.values())
    assert fps["yolact_d2 fast path"] == run["contenders"]["yolact_d2 fast path"]["images_per_s"]
    # the ONNX export on ONNX Runtime (CPU in a dry run): PyTorch CPU on the other side, so the
    # agreement is exact up to the export's float rounding (test_export's bound)
    onnx_cpu = steps["onnx_runtimes"]["figures"]["cpu"]
    assert onnx_cpu["classes_equal"] and onnx_cpu["max_score_diff"] <= 1e-4 and onnx_cpu["detections"] > 0
    assert doc["fps_batch1"] == {TINY: {**fps, "onnx cpu": onnx_cpu["fps_batch1"]}}
    assert run["contenders"]["yolact_d2 fast path"]["detections_first_image"] == run["contenders"]["yolact_d2"][
        "detections_first_image"]


def test_spent_budget_skips_every_step_with_the_reason(tmp_path):
    proc, doc = _run(tmp_path, "--budget-s", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = doc["steps"]
    assert list(steps) == list(STEPS)
    for name, step in steps.items():
        assert step["status"] == "skipped", (name, step)
        if name not in ("install", "ddp_nccl", "train_amp_bf16", STEPS[-3]):  # those say why before the budget
            assert "time budget" in step["reason"], (name, step)


def test_benchmark_plan_required_figures_first():
    # oracle: the order, written out by hand for the default configs
    plan = [(name, precisions, batches) for name, _, _, precisions, batches in
            gpu_check.benchmark_plan(gpu_check.parse_args([]))]
    r50, r101 = "benchmark:yolact_R_50_FPN_550.py", "benchmark:yolact_R_101_FPN_550.py"
    assert plan == [
        (f"{r50} fp32 batch 1", ["fp32"], ["1"]), (f"{r101} fp32 batch 1", ["fp32"], ["1"]),
        (f"{r50} fp32 batch 8", ["fp32"], ["8"]), (f"{r101} fp32 batch 8", ["fp32"], ["8"]),
        (f"{r50} fp16+bf16 batch 1,8", ["fp16", "bf16"], ["1", "8"]),
        (f"{r101} fp16+bf16 batch 1,8", ["fp16", "bf16"], ["1", "8"]),
        ("benchmark:yolact_plus_R_50_FPN_550.py fp32+fp16 batch 1", ["fp32", "fp16"], ["1"]),
        ("benchmark:yolact_edge_vid_R_50_FPN_550.py fp32 batch 1", ["fp32"], ["1"]),
    ]
    names = gpu_check.step_names(gpu_check.parse_args([]))
    assert names[:8] == list(STEPS[:8]) and names[8:-2] == [p[0] for p in plan]
    assert names[-2:] == ["onnx_runtimes", "benchmark_ops"]
    args = gpu_check.parse_args([])
    image = gpu_check.benchmark_command(args, gpu_check.BENCHMARK_CONFIGS[0], ["fp32"], ["1"], "x.json")
    video = gpu_check.benchmark_command(args, gpu_check.MORE_BENCHMARK_CONFIGS[1], ["fp32"], ["1"], "x.json")
    assert "--fast-path" in image and "--fast-path" not in video  # VideoPredictor has no fast path
    assert image[image.index("--device") + 1] == "cuda" and image[image.index("--batch-sizes") + 1] == "1"


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed process waits in state Z until someone reaps it)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_time_box_kills_the_step_and_its_children_and_json_follows_each_step(tmp_path):
    # oracle: the wall clock, and the grandchild's process gone (/proc)
    args = gpu_check.parse_args(["--dry-run", "--output", str(tmp_path), "--budget-s", "100"])
    c = gpu_check.Check(args, ["first", "second"])
    child = "import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); time.sleep(60)"
    rc, out, secs = c.run("first", [sys.executable, "-c", child], cap_s=2)
    assert rc is None and 2 <= secs < 10
    grandchild = int(out.split()[0])
    time.sleep(0.2)
    assert not _running(grandchild)
    c.record("first", "failed", f"timed out after {secs:.0f} s", secs)
    doc = json.load(open(tmp_path / "gpu_check.json"))
    assert list(doc["steps"]) == ["first"] and doc["not_run_yet"] == ["second"]
    assert not c.budget_allows("second", 1000)  # expects more than the 100 s budget: skipped, said why
    doc = json.load(open(tmp_path / "gpu_check.json"))
    assert doc["not_run_yet"] == [] and "needs ~1000 s" in doc["steps"]["second"]["reason"]
    c.log.close()


# ---------------------------------------------------------------------------------- wheelhouse
def _requirements(dist):
    """Requirement names of an installed distribution that apply on the GPU machine (Python 3.12, Linux)."""
    from packaging.requirements import Requirement

    there = {"python_version": "3.12", "python_full_version": "3.12.1", "sys_platform": "linux",
             "platform_system": "Linux", "extra": ""}
    reqs = [Requirement(r) for r in metadata.requires(dist) or []]
    return [r.name for r in reqs if r.marker is None or r.marker.evaluate(there)]


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def test_wheelhouse_covers_the_dependency_closure():
    carried = {_norm(n) for n in gpu_check.PURE_PACKAGES + gpu_check.BINARY_PACKAGES} | {"detectron2"}
    has = {_norm(n) for n in gpu_check.GPU_MACHINE_HAS}
    skipped = {_norm(n) for n in gpu_check.NOT_CARRIED}
    assert not carried & has and not carried & skipped
    # oracle: the installed metadata of detectron2, requirements.txt and everything they pull in
    todo = ["detectron2"] + [ln.strip() for ln in open(os.path.join(REPO, "requirements.txt"))
                             if ln.strip() and not ln.startswith("#")]
    seen = set()
    while todo:
        name = _norm(todo.pop())
        if name in seen or name in has or name in skipped:
            continue
        seen.add(name)
        assert name in carried, f"{name} is needed (by the closure of detectron2/requirements.txt) but not carried"
        todo += _requirements(name)
    assert seen == carried, f"carried but needed by nothing: {sorted(carried - seen)}"


def test_download_commands_pin_this_environment_and_target_cp312(tmp_path):
    cmds = gpu_check.download_commands(str(tmp_path), pip=("pip",))
    by_name = {c[-1].split("==")[0]: c for c in cmds}
    assert set(by_name) == set(gpu_check.PURE_PACKAGES + gpu_check.BINARY_PACKAGES)
    for name, cmd in by_name.items():
        assert cmd[-1] == f"{name}=={metadata.version(name)}" and "--no-deps" in cmd
        if name in gpu_check.BINARY_PACKAGES:
            assert cmd[1] == "download" and cmd[cmd.index("--python-version") + 1] == "3.12"
            assert "manylinux2014_x86_64" in cmd and "--only-binary=:all:" in cmd
        elif name in gpu_check.SDIST_ONLY:
            assert cmd[1] == "wheel"  # built here into a py3-none-any wheel
        else:
            assert cmd[1] == "download" and "--only-binary=:all:" in cmd and "--platform" not in cmd


@pytest.mark.parametrize("filename, ok", [
    ("pycocotools-2.0.11-cp312-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
    ("pyyaml-6.0.4-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
    ("fvcore-0.1.5-py3-none-any.whl", True),
    ("pyyaml-6.0.4-cp311-cp311-manylinux2014_x86_64.whl", False),
    ("pyyaml-6.0.4-cp312-cp312-win_amd64.whl", False),
    ("pyyaml-6.0.4-cp312-cp312-macosx_11_0_arm64.whl", False),
    ("broken.whl", False),
])
def test_wheel_tags(filename, ok):
    assert gpu_check.wheel_tags_ok(filename) is ok


@pytest.mark.slow
def test_download_of_one_tiny_wheel_from_the_registry(tmp_path):
    """The real pip command for one small pure-Python package (the CI machine reaches the registry)."""
    cmd = [c for c in gpu_check.download_commands(str(tmp_path)) if c[-1].startswith("termcolor==")][0]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and re.search(r"connection|resolve|network|Max retries", proc.stdout + proc.stderr, re.I):
        pytest.skip(f"the package registry is not reachable: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = os.listdir(tmp_path)
    assert wheel == f"termcolor-{metadata.version('termcolor')}-py3-none-any.whl" and gpu_check.wheel_tags_ok(wheel)


def test_no_cuda_reason():
    class A:
        dry_run = True

    assert "dry run" in gpu_check.no_cuda_reason(A)
    A.dry_run = False
    assert (gpu_check.no_cuda_reason(A) is None) == torch.cuda.is_available()


@pytest.mark.slow
def test_onnx_runtimes_without_gpu_providers_is_skipped_not_failed(monkeypatch):
    """A real (not dry) onnx_runtimes step here: TensorRT is not in this onnxruntime (skipped, with
    the reason), and CUDA, made to look available, really falls back to the CPU at load: refused by
    deploy.runtimes and recorded as the machine's set-up (skipped), not as a failure of our graph."""
    import onnxruntime as ort

    if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()):
        pytest.skip("this onnxruntime has GPU providers")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    status, reason, figures = gpu_check.step_onnx_runtimes(gpu_check.parse_args(["--benchmark-configs", TINY]))
    assert status == "skipped" and "no runtime of cuda, tensorrt is available" in reason, (status, reason)
    assert figures["cuda"]["status"] == "skipped" and "fell back from CUDAExecutionProvider" in figures["cuda"]["reason"]
    for key in ("tensorrt", "tensorrt fp16"):
        assert figures[key]["status"] == "skipped" and "TensorrtExecutionProvider" in figures[key]["reason"]
