"""setup.py: the CUDA-or-CPU kernel decision, and `pip install .` (not editable) into a fresh venv.

The fast tests run setup.py's decision with fake `nvcc` scripts that report another CUDA version
(oracle: the hand-written cases torch's own build check implies: another major version fails
torch's build, a minor difference only warns).

The slow tests build a wheel of this tree with `pip install --no-build-isolation .` into a fresh
venv (torch and the other dependencies are borrowed from this venv through a plain .pth path
line, appended after the new site-packages, so this venv's editable yolact_d2 finder is not
active; Detectron2 comes from our wheel in .cache/wheels). The CUDA toolkit it sees is a fake one
whose nvcc reports torch's CUDA version and cannot compile: the build must make the CPU kernels,
with one message. Then, from a folder outside the repository, the installed package is
checked against the checkout: every config shipped byte for byte, Predictor detections, 2
training iterations of a user's config that inherits ours (same losses as the checkout's run of
our config), a yacs DefaultPredictor, the console scripts.
"""
import json
import os
import re
import runpy
import shutil
import stat
import subprocess
import sys
import sysconfig
import textwrap

import pytest
import torch

import inference_fixtures as fx

REPO = fx.REPO
SETUP = runpy.run_path(os.path.join(REPO, "setup.py"), run_name="setup_under_test")  # no setup() call


def fake_toolkit(root, version, can_compile=True):
    """A folder that looks like a CUDA toolkit: bin/nvcc reporting `version`, include/cuda_runtime.h."""
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    os.makedirs(os.path.join(root, "include"), exist_ok=True)
    open(os.path.join(root, "include", "cuda_runtime.h"), "w").close()
    nvcc = os.path.join(root, "bin", "nvcc")
    compile_part = "exit 0" if can_compile else 'echo "fake nvcc: cannot compile $*" >&2; exit 1'
    with open(nvcc, "w") as f:
        f.write(textwrap.dedent(f"""\
            #!/bin/sh
            if [ "$1" = "--version" ]; then
              echo "nvcc: NVIDIA (R) Cuda compiler driver"
              echo "Cuda compilation tools, release {version}, V{version}.99"
              exit 0
            fi
            {compile_part}
            """))
    os.chmod(nvcc, os.stat(nvcc).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(root)


# ------------------------------------------------------------------------------ the decision
def test_plan_kernels_cases():
    plan = SETUP["plan_kernels"]
    assert plan("13.0", "/cuda", "13.0") == (True, None)
    assert plan("13.0", "/cuda", "13.2").use_cuda  # torch only warns about a minor difference
    other = plan("12.4", "/opt/cuda-11.8", "11.8")
    assert not other.use_cuda and "CUDA 11.8" in other.message and "CUDA 12.4" in other.message
    assert "/opt/cuda-11.8" in other.message and "building the CPU kernels only" in other.message
    assert plan(None, "/cuda", "13.0") == (False, None)  # a CPU build of torch: nothing to say
    assert not plan("13.0", None, None).use_cuda and "no CUDA toolkit" in plan("13.0", None, None).message
    assert not plan("13.0", "/cuda", None).use_cuda  # nvcc does not run
    assert "YOLACT_D2_CPU_ONLY" in plan("13.0", "/cuda", "13.0", force_cpu=True).message


@pytest.mark.skipif(torch.version.cuda is None, reason="torch is a CPU build: the CUDA toolkit is not consulted")
def test_fake_nvcc_on_path_with_another_major_version(tmp_path, monkeypatch):
    other = f"{int(torch.version.cuda.split('.')[0]) - 2}.8"
    toolkit = fake_toolkit(tmp_path / "cuda-other", other)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.delenv("YOLACT_D2_CPU_ONLY", raising=False)
    monkeypatch.setenv("PATH", os.path.join(toolkit, "bin") + os.pathsep + os.environ["PATH"])
    assert SETUP["find_cuda_home"]() == toolkit
    assert SETUP["nvcc_version"](toolkit) == other
    plan = SETUP["current_plan"]()
    assert not plan.use_cuda
    assert f"CUDA {other}" in plan.message and f"torch is built for CUDA {torch.version.cuda}" in plan.message


@pytest.mark.skipif(torch.version.cuda is None, reason="torch is a CPU build: the CUDA toolkit is not consulted")
def test_toolkit_that_cannot_compile(tmp_path, monkeypatch):
    """torch's CUDA version, but nvcc fails on a one-line kernel: CPU kernels, decided in seconds."""
    toolkit = fake_toolkit(tmp_path / "cuda-broken", torch.version.cuda, can_compile=False)
    monkeypatch.setenv("CUDA_HOME", toolkit)
    monkeypatch.delenv("YOLACT_D2_CPU_ONLY", raising=False)
    monkeypatch.delenv("YOLACT_D2_REQUIRE_CUDA", raising=False)
    plan = SETUP["current_plan"]()
    assert not plan.use_cuda and "cannot compile a test kernel" in plan.message and "fake nvcc" in plan.message
    monkeypatch.setenv("YOLACT_D2_REQUIRE_CUDA", "1")
    with pytest.raises(RuntimeError, match="cannot compile a test kernel"):
        SETUP["current_plan"]()
    working = fake_toolkit(tmp_path / "cuda-ok", torch.version.cuda, can_compile=True)
    monkeypatch.setenv("CUDA_HOME", working)
    assert SETUP["current_plan"]() == (True, None)


def test_failed_cuda_build_falls_back_to_cpu(monkeypatch, capsys):
    """A CUDA build failing after the probe (simulated: torch's build step raises for the CUDA
    extension) rebuilds the same Extension object with the CPU sources and says why once."""
    import torch.utils.cpp_extension as cpp_ext
    from setuptools import Distribution
    from torch.utils.cpp_extension import BuildExtension

    # _cuda_extension points torch at the toolkit: undo that after the test
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    monkeypatch.setenv("CUDA_HOME", cuda_home)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", SETUP["DEFAULT_CUDA_ARCHS"])
    monkeypatch.setattr(cpp_ext, "CUDA_HOME", cpp_ext.CUDA_HOME)
    calls = []

    def fake_build(self):
        (ext,) = self.extensions
        calls.append((ext.yolact_d2_cuda, list(ext.sources)))
        if ext.yolact_d2_cuda:
            raise RuntimeError("Error compiling objects for extension")

    monkeypatch.setattr(BuildExtension, "build_extensions", fake_build)
    monkeypatch.delenv("YOLACT_D2_REQUIRE_CUDA", raising=False)
    ext = SETUP["_cuda_extension"](cuda_home)
    cmd = SETUP["_build_ext_with_cpu_fallback"]()(Distribution({"ext_modules": [ext]}))
    cmd.extensions = [ext]
    cmd.build_extensions()
    assert [cuda for cuda, _ in calls] == [True, False]
    assert any(s.endswith(".cu") for s in calls[0][1]) and not any(s.endswith(".cu") for s in calls[1][1])
    assert sorted(os.path.basename(s) for s in calls[1][1]) == sorted(
        f for f in os.listdir(os.path.join(REPO, "yolact_d2", "layers", "csrc")) if f.endswith(".cpp"))
    assert "nvcc" not in ext.extra_compile_args and "-DWITH_CUDA" not in ext.extra_compile_args["cxx"]
    assert capsys.readouterr().err.count("[yolact_d2] the CUDA build failed (RuntimeError") == 1
    monkeypatch.setenv("YOLACT_D2_REQUIRE_CUDA", "1")
    ext = SETUP["_cuda_extension"](cuda_home)
    cmd.extensions = [ext]
    with pytest.raises(RuntimeError, match="Error compiling"):
        cmd.build_extensions()


def test_wrapper_nvcc_on_path_has_no_toolkit_around_it(tmp_path, monkeypatch):
    """/usr/local/bin/nvcc-style wrapper scripts: the toolkit is not their parent folder."""
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text("#!/bin/sh\nexit 0\n")
    wrapper.chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrapper.parent) + os.pathsep + os.environ["PATH"])
    expected = "/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    assert SETUP["find_cuda_home"]() == expected


# ------------------------------------------------------------------------------ the wheel
def _run(cmd, cwd, env, timeout=900):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _detectron2_wheel():
    with open(os.path.join(REPO, "scripts", "build_detectron2_wheel.py")) as f:
        version = re.search(r'^VERSION = "(.*)"$', f.read(), re.M).group(1)
    return os.path.join(REPO, ".cache", "wheels", f"detectron2-{version}-py3-none-any.whl")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with our Detectron2 wheel and `pip install .` of this tree; runs outside the repo."""
    wheel = _detectron2_wheel()
    if not os.path.isfile(wheel):
        pytest.skip(f"{wheel} is missing: run scripts/setup_env.sh first (it builds the Detectron2 wheel)")
    root = tmp_path_factory.mktemp("install")
    # the tree as a clone with local changes would have it: tracked and untracked-but-not-ignored files
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    src = root / "src"
    for rel in filter(None, files):
        if os.path.isfile(os.path.join(REPO, rel)):
            os.makedirs(src / os.path.dirname(rel), exist_ok=True)
            shutil.copy2(os.path.join(REPO, rel), src / rel)

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", MAX_JOBS="2",
               DETECTRON2_DATASETS=str(root / "datasets"), PATH=str(venv / "bin") + os.pathsep + env["PATH"])
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env).stdout.strip()
    # a plain path line: appended after the venv's own site-packages, its .pth files not run
    with open(os.path.join(site, "zz_borrow_main_venv.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", wheel], root, env)

    build_env = dict(env)
    for key in ("CUDA_HOME", "CUDA_PATH", "YOLACT_D2_CPU_ONLY", "YOLACT_D2_NO_EXT", "YOLACT_D2_REQUIRE_CUDA"):
        build_env.pop(key, None)
    if torch.version.cuda:  # a toolkit of torch's version whose compiler fails: CPU kernels must be built
        build_env["CUDA_HOME"] = fake_toolkit(root / "broken-cuda", torch.version.cuda, can_compile=False)
    else:
        build_env["YOLACT_D2_CPU_ONLY"] = "1"
    build = _run([py, "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation", "--ignore-installed",
                  str(src)], root, build_env, timeout=1200)
    work = root / "work"  # the current directory of every command: outside the repository
    work.mkdir()
    return {"py": py, "env": env, "site": site, "work": work, "root": root, "src": str(src),
            "build_log": build.stdout + build.stderr}


def _installed_python(installed, code, *args):
    script = installed["root"] / "snippet.py"
    script.write_text(textwrap.dedent(code))
    out = _run([installed["py"], script, *args], installed["work"], installed["env"]).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_wheel_build_falls_back_to_cpu_kernels(installed):
    log = installed["build_log"]
    if torch.version.cuda:
        messages = re.findall(r"\[yolact_d2\] .*", log)
        assert len(messages) == 1, log[-3000:]  # one message: why there are no CUDA kernels
        assert "cannot compile a test kernel" in messages[0] and "building the CPU kernels only" in messages[0]
    info = _installed_python(installed, """
        import json, yolact_d2
        from yolact_d2.layers import backend_info
        print(json.dumps({"file": yolact_d2.__file__, "backends": backend_info()}))
    """)
    assert info["file"].startswith(installed["site"])  # the installed copy, not the checkout
    assert info["backends"]["fast_nms"] == {"cpu": "cpu-kernel", "cuda": "pytorch"}
    assert info["backends"]["crop_masks"] == {"cpu": "cpu-kernel", "cuda": "pytorch"}


@pytest.mark.slow
def test_installed_model_zoo_ships_every_config(installed):
    got = _installed_python(installed, """
        import json, os
        from yolact_d2 import model_zoo
        root = model_zoo.configs_root()
        files = {}
        for folder, _, names in os.walk(root):
            for n in names:
                if not n.endswith(".pyc"):
                    p = os.path.join(folder, n)
                    files[os.path.relpath(p, root)] = open(p, "rb").read().hex()
        cfg = model_zoo.get_config("yolact/yolact_R_50_FPN_550.py")
        print(json.dumps({"root": root, "files": files, "depth": cfg.model.backbone.bottom_up.depth,
                          "file": model_zoo.get_config_file("configs/yolact/yolact_R_50_FPN_550.py"),
                          "listed": model_zoo.list_configs()}))
    """)
    assert got["root"] == os.path.join(installed["site"], "yolact_d2", "configs")
    expected = {}  # the tree that was installed (a copy: the checkout may change meanwhile)
    configs = os.path.join(installed["src"], "configs")
    for folder, _, names in os.walk(configs):
        for n in names:
            if n.endswith((".py", ".yaml", ".yml")):
                p = os.path.join(folder, n)
                expected[os.path.relpath(p, configs)] = open(p, "rb").read().hex()
    assert got["files"] == expected
    assert got["depth"] == 50 and got["file"] == os.path.join(got["root"], "yolact", "yolact_R_50_FPN_550.py")
    assert "yolact/yolact_R_50_FPN_550.py" in got["listed"] and "shapes/yolact_shapes_tiny.py" in got["listed"]


@pytest.mark.slow
def test_installed_predictor_matches_checkout(installed, tmp_path):
    from yolact_d2 import Predictor

    weights = fx.write_checkpoint(str(tmp_path / "seeded.pth"), seed=0)
    image_path = str(tmp_path / "image.png")
    import cv2

    image = fx.test_image(120, 160, seed=3)
    cv2.imwrite(image_path, image)
    got = _installed_python(installed, """
        import json, sys, cv2
        from yolact_d2 import Predictor, model_zoo
        p = Predictor(model_zoo.get_config_file("yolact/yolact_R_50_FPN_550.py"), sys.argv[1], device="cpu",
                      opts=sys.argv[3:])
        inst = p(cv2.imread(sys.argv[2]))
        print(json.dumps({"classes": inst.pred_classes.tolist(), "scores": inst.scores.tolist(),
                          "boxes": inst.pred_boxes.tensor.tolist(), "mask_pixels": inst.pred_masks.sum((1, 2)).tolist()}))
    """, weights, image_path, *fx.SMALL_OPTS)
    ref = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS)(image)
    assert len(ref) > 0 and got["classes"] == ref.pred_classes.tolist()
    torch.testing.assert_close(torch.tensor(got["scores"]), ref.scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(got["boxes"]), ref.pred_boxes.tensor, rtol=0, atol=0.5)
    pixels = ref.pred_masks.sum((1, 2)).tolist()
    assert all(abs(a - b) <= max(2, 0.01 * b) for a, b in zip(got["mask_pixels"], pixels))


def _last_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "total_loss" in r][-1]


@pytest.mark.slow
def test_installed_train_net_user_config_inherits_ours(installed):
    """A config outside the repository builds on the shipped tiny shapes config; 2 iterations with
    `python -m yolact_d2.tools.train_net` give the losses of the checkout's run of our config."""
    work = installed["work"]
    user_cfg = work / "my_yolact.py"
    user_cfg.write_text(textwrap.dedent("""\
        from yolact_d2.model_zoo import get_config

        _base = get_config("shapes/yolact_shapes_tiny.py")
        model, dataloader, optimizer, lr_multiplier, train = (
            _base.model, _base.dataloader, _base.optimizer, _base.lr_multiplier, _base.train)
        train.max_iter = 2
        train.output_dir = "./output/mine"
    """))
    _run([installed["py"], "-m", "yolact_d2.tools.train_net", "--config-file", user_cfg], work, installed["env"],
         timeout=600)
    ref_dir = installed["root"] / "checkout_run"
    env = dict(installed["env"], PATH=os.environ["PATH"])
    _run([sys.executable, "-m", "yolact_d2.tools.train_net", "--config-file",
          "shapes/yolact_shapes_tiny.py", "train.max_iter=2",  # a model-zoo name: the checkout's file
          f"train.output_dir={ref_dir}"], work, env, timeout=600)
    mine, ref = _last_metrics(work / "output" / "mine"), _last_metrics(ref_dir)
    assert mine["iteration"] == ref["iteration"] == 1
    losses = sorted(k for k in ref if k.startswith("loss_") or k == "total_loss")
    assert len(losses) >= 4 and all(abs(mine[k] - ref[k]) <= 1e-6 * max(1.0, abs(ref[k])) for k in losses), (mine, ref)
    assert os.path.isfile(work / "output" / "mine" / "model_final.pth")


@pytest.mark.slow
def test_installed_yacs_default_predictor(installed, tmp_path):
    if not os.path.isfile(os.path.join(REPO, "yolact_d2", "config.py")) or not os.path.isdir(
        os.path.join(REPO, "configs", "yacs")
    ):
        pytest.skip("no yacs support in this tree (yolact_d2/config.py, configs/yacs/)")
    import cv2

    from yolact_d2 import Predictor

    weights = fx.write_checkpoint(str(tmp_path / "seeded.pth"), seed=0)
    image = fx.test_image(120, 160, seed=4)
    image_path = str(tmp_path / "image.png")
    cv2.imwrite(image_path, image)
    got = _installed_python(installed, """
        import json, sys, cv2
        from detectron2.engine import DefaultPredictor
        from yolact_d2 import model_zoo
        cfg = model_zoo.get_config("yacs/yolact_R_50_FPN_550.yaml")
        cfg.merge_from_list(["MODEL.YOLACT.INPUT_SIZE", int(sys.argv[3]), "MODEL.WEIGHTS", sys.argv[1],
                             "MODEL.DEVICE", "cpu"])
        inst = DefaultPredictor(cfg)(cv2.imread(sys.argv[2]))["instances"]
        print(json.dumps({"classes": inst.pred_classes.tolist(), "scores": inst.scores.tolist()}))
    """, weights, image_path, str(fx.SMALL_INPUT))
    ref = Predictor(fx.R50_CONFIG, weights, device="cpu", opts=fx.SMALL_OPTS, optimize=False)(image)
    assert len(ref) > 0 and got["classes"] == ref.pred_classes.tolist()
    torch.testing.assert_close(torch.tensor(got["scores"]), ref.scores, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_installed_console_scripts(installed):
    bin_dir = os.path.dirname(installed["py"])
    for name in ("yolact-demo", "yolact-train-net"):
        proc = _run([os.path.join(bin_dir, name), "--help"], installed["work"], installed["env"])
        assert "--config" in proc.stdout, (name, proc.stdout[-500:])
