#!/usr/bin/env python
"""Build a Python-only `detectron2` wheel from the `pb1-detectron2==0.6` sdist.

Detectron2 is not on the package registry under its own name; `pb1-detectron2==0.6` holds
upstream v0.6's Python sources but not `layers/csrc`, so it cannot be pip-installed as is.
This script verifies the sdist's sha256, copies its `detectron2/` package, applies the few
fixes v0.6 needs on today's stack, replaces the compiled `_C` with a stub that raises a named
ImportError, and builds a real wheel (`pip show/uninstall detectron2` work, deps declared).

Usage: build_detectron2_wheel.py SDIST.tar.gz OUT_DIR
(SDIST is downloaded from the registry first when absent: `pip download` cannot fetch it, since
pip rejects the sdist's direct-URL extra while preparing its metadata.)
"""
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import shutil
import json
import urllib.request

SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# Bump the local build number whenever the fixes change: set-up then rebuilds the wheel.
VERSION = "0.6+nocsrc.3"
# Upstream v0.6 setup.py's install_requires (black only matters for LazyConfig.save).
REQUIRES = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
    "black",
    "packaging",
]

STUB_C = '''"""Stand-in for Detectron2's compiled `_C`, which this Python-only build does not have.

Everything of Detectron2 that has a PyTorch/torchvision path works; the ops that exist only in
`_C` (rotated boxes, ROIAlignRotated, the fast COCOeval, deformable conv on GPU) raise an
ImportError naming the op.
"""


def get_compiler_version():
    return "not built (python-only detectron2 wheel)"


def get_cuda_version():
    return "not built (python-only detectron2 wheel)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"detectron2._C.{name} is not available: this detectron2 ({__package__} {VERSION!r}) was built "
        "from the pb1-detectron2 sdist without its C++/CUDA sources (layers/csrc), so the compiled "
        f"op '{name}' does not exist. Use an alternative (e.g. COCOEvaluator(use_fast_impl=False), "
        "torchvision ops) or install detectron2 built from source."
    )
'''.replace("{VERSION!r}", repr(VERSION))

SETUP_PY = '''from setuptools import find_packages, setup

setup(
    name="detectron2",
    version={version!r},
    description="Detectron2 v0.6 (Python-only build from the pb1-detectron2 sdist; no compiled _C)",
    url="https://github.com/facebookresearch/detectron2",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py", "configs/*.yaml"]}},
    python_requires=">=3.7",
    install_requires={requires!r},
)
'''


SIMPLE_INDEX = os.environ.get("YOLACT_D2_SIMPLE_INDEX", "https://pypi.org/simple")


def download_sdist(dest):
    """Fetch pb1-detectron2-0.6.tar.gz through the registry's JSON simple API."""
    req = urllib.request.Request(
        f"{SIMPLE_INDEX}/pb1-detectron2/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        files = json.load(resp)["files"]
    (entry,) = [f for f in files if f["filename"] == "pb1-detectron2-0.6.tar.gz"]
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".part"
    with urllib.request.urlopen(entry["url"], timeout=300) as resp, open(tmp, "wb") as f:
        shutil.copyfileobj(resp, f)
    os.replace(tmp, dest)
    print(f"downloaded {entry['filename']} to {dest}")


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# (file, pattern, replacement, expected minimum count): each fix fails loudly if the sdist changed.
NUMPY_ALIAS = re.compile(r"\bnp\.(int|float|bool|object|str)\b(?![\w.])")
# (file, [(old text, new text), ...]): exact-text fixes; the build stops if a text is missing.
FILE_FIXES = [
    # setuptools >= 81 has no pkg_resources.
    (
        "detectron2/model_zoo/model_zoo.py",
        [
            ("import pkg_resources\n", "from importlib import resources as _resources\n"),
            (
                'pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
                'str(_resources.files("detectron2.model_zoo").joinpath("configs", config_path))',
            ),
        ],
    ),
    # Python >= 3.11: random.sample() no longer accepts a set (MapDataset's fallback when a
    # mapper returns None raised TypeError).
    (
        "detectron2/data/common.py",
        [("self._rng.sample(self._fallback_candidates, k=1)", "self._rng.sample(sorted(self._fallback_candidates), k=1)")],
    ),
    # nms_rotated calls its op through torch.ops.detectron2, which only the compiled _C registers:
    # without it that is a bare AttributeError. Go through the stub, whose ImportError names the op.
    (
        "detectron2/layers/nms.py",
        [
            (
                "    return torch.ops.detectron2.nms_rotated(boxes, scores, iou_threshold)\n",
                "    from detectron2 import _C\n\n"
                "    if not hasattr(torch.ops.detectron2, \"nms_rotated\"):  # no compiled op library\n"
                "        return _C.nms_rotated(boxes, scores, iou_threshold)  # the stub's named ImportError\n"
                "    return torch.ops.detectron2.nms_rotated(boxes, scores, iou_threshold)\n",
            )
        ],
    ),
]


def patch_tree(pkg_dir):
    """Fix v0.6 for Pillow >= 10, numpy 2, setuptools >= 81 (no pkg_resources) and Python 3.11."""
    changed = {}
    for root, _, files in os.walk(pkg_dir):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as f:
                src = f.read()
            new = src.replace("Image.LINEAR", "Image.BILINEAR")
            new = NUMPY_ALIAS.sub(lambda m: m.group(1), new)
            if new != src:
                changed[os.path.relpath(path, os.path.dirname(pkg_dir))] = True
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    for rel, replacements in FILE_FIXES:
        path = os.path.join(os.path.dirname(pkg_dir), rel)
        with open(path, encoding="utf-8") as f:
            src = f.read()
        for old, new in replacements:
            if old not in src:
                sys.exit(f"build_detectron2_wheel: expected text not found in {rel}: {old[:60]!r}")
            src = src.replace(old, new)
        with open(path, "w", encoding="utf-8") as f:
            f.write(src)
        changed[rel] = True
    return sorted(changed)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sdist, out_dir = sys.argv[1], sys.argv[2]
    if not os.path.exists(sdist):
        download_sdist(sdist)
    got = sha256(sdist)
    if got != SDIST_SHA256:
        sys.exit(f"build_detectron2_wheel: {sdist} has sha256 {got}, expected {SDIST_SHA256}; refusing to build.")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        (top,) = [d for d in os.listdir(tmp) if os.path.isdir(os.path.join(tmp, d))]
        src_pkg = os.path.join(tmp, top, "detectron2")
        build = os.path.join(tmp, "build")
        shutil.copytree(src_pkg, os.path.join(build, "detectron2"))
        changed = patch_tree(os.path.join(build, "detectron2"))
        with open(os.path.join(build, "detectron2", "_C.py"), "w") as f:
            f.write(STUB_C)
        with open(os.path.join(build, "setup.py"), "w") as f:
            f.write(SETUP_PY.format(version=VERSION, requires=REQUIRES))
        print(f"patched {len(changed)} files for Pillow>=10 / numpy 2 / no pkg_resources / Python 3.11")
        subprocess.check_call(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out_dir, build]
        )
    print(f"built detectron2 {VERSION} wheel in {out_dir}")


if __name__ == "__main__":
    main()
