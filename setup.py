"""Install yolact_d2, its configs, console scripts and its C++/CUDA extension (yolact_d2._C).

    pip install --no-build-isolation .      # a wheel, next to the torch / Detectron2 you have
    pip install --no-build-isolation -e .   # a checkout (what scripts/setup_env.sh does)

The extension is compiled against the installed torch, so pip must see it: `--no-build-isolation`.
In pip's default isolated build there is no torch; yolact_d2 is then installed without the
extension (its pure-PyTorch ops give the same results, slower) and this says so.

CUDA kernels are built when a CUDA toolkit (CUDA_HOME, nvcc on PATH, or /usr/local/cuda) has the
same major version as torch's CUDA. A toolkit of another major version, one whose nvcc cannot
compile a one-line test kernel, or a CUDA build that fails, gives a CPU-kernel build with one
message saying why (YOLACT_D2_REQUIRE_CUDA=1 makes it an error instead). YOLACT_D2_CPU_ONLY=1 forces a CPU-only build, YOLACT_D2_NO_EXT=1 skips the
extension, TORCH_CUDA_ARCH_LIST overrides the default GPU architectures.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
from typing import NamedTuple, Optional

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("yolact_d2", "layers", "csrc")
# Turing (7.5) to Hopper (9.0); PTX lets newer GPUs JIT the 9.0 code.
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"
CONFIG_PATTERNS = ("*.py", "*.yaml", "*.yml")


def log(message: str) -> None:
    """One line that scripts/setup_env.sh picks out of pip's output (the `[yolact_d2]` prefix)."""
    print(f"[yolact_d2] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ CUDA or CPU kernels
def _has_cuda_headers(root: str) -> bool:
    return os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))


def find_cuda_home() -> Optional[str]:
    """The toolkit torch would use: CUDA_HOME / CUDA_PATH, else nvcc on PATH, else /usr/local/cuda.

    An nvcc on PATH that is a wrapper script (e.g. /usr/local/bin/nvcc running the real one) has
    no toolkit around it; then /usr/local/cuda is taken, where torch would guess /usr/local."""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        return env
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if _has_cuda_headers(root):
            return root
    if os.path.exists(os.path.join("/usr/local/cuda", "bin", "nvcc")):
        return "/usr/local/cuda"
    return None


def nvcc_version(cuda_home: str) -> Optional[str]:
    """"13.0" from `<cuda_home>/bin/nvcc --version` (the nvcc torch's build runs); None if it cannot run."""
    try:
        out = subprocess.run(
            [os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return f"{match.group(1)}.{match.group(2)}" if match else None


class KernelPlan(NamedTuple):
    use_cuda: bool
    message: Optional[str]  # why CUDA kernels are not built (None: nothing worth saying)


def plan_kernels(torch_cuda: Optional[str], cuda_home: Optional[str], toolkit_version: Optional[str],
                 force_cpu: bool = False) -> KernelPlan:
    """Whether to compile CUDA kernels, from torch.version.cuda and the toolkit found.

    torch's own build check refuses a toolkit whose major version differs from torch's (and only
    warns about a minor difference): that case becomes a CPU-kernel build instead of a failed install.
    """
    if force_cpu:
        return KernelPlan(False, "YOLACT_D2_CPU_ONLY=1: building the CPU kernels only.")
    if not torch_cuda:
        return KernelPlan(False, None)  # a CPU build of torch: CPU kernels, as expected
    if cuda_home is None:
        return KernelPlan(False, f"no CUDA toolkit found (torch is built for CUDA {torch_cuda}; set CUDA_HOME "
                                 "to a matching toolkit for CUDA kernels): building the CPU kernels only.")
    if toolkit_version is None:
        return KernelPlan(False, f"cannot run {os.path.join(cuda_home, 'bin', 'nvcc')} --version: "
                                 "building the CPU kernels only.")
    if toolkit_version.split(".")[0] != torch_cuda.split(".")[0]:
        return KernelPlan(False, (
            f"the CUDA toolkit in {cuda_home} is CUDA {toolkit_version}, but torch is built for CUDA "
            f"{torch_cuda}: building the CPU kernels only (the CUDA ops use the pure-PyTorch path). For "
            f"CUDA kernels, point CUDA_HOME at a CUDA {torch_cuda.split('.')[0]}.x toolkit, or install "
            f"the torch build for CUDA {toolkit_version}."
        ))
    return KernelPlan(True, None)


PROBE_KERNEL = "__global__ void yolact_d2_probe(float* x) { x[0] = 1.0f; }\n"


def nvcc_probe_error(cuda_home: str) -> Optional[str]:
    """None if the toolkit's nvcc compiles a one-line kernel (a few seconds), else its error.

    Catches a toolkit that cannot build at all (e.g. a host compiler that nvcc does not support)
    before the long build starts; later failures are caught by the build's own CPU fallback."""
    import tempfile

    arch = re.split(r"[;\s]+", os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS).strip())[0]
    arch = re.match(r"(\d+)\.(\d+)", arch)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        with open(src, "w") as f:
            f.write(PROBE_KERNEL)
        cmd = [os.path.join(cuda_home, "bin", "nvcc"), "-c", src, "-o", os.path.join(tmp, "probe.o")]
        if arch:
            cmd.append(f"-arch=sm_{arch.group(1)}{arch.group(2)}")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            return f"{type(e).__name__}: {e}"
    if proc.returncode == 0:
        return None
    lines = (proc.stderr + proc.stdout).strip().splitlines()
    return (lines[-1] if lines else f"exit status {proc.returncode}")[:300]


def current_plan() -> KernelPlan:
    import torch

    cuda_home = find_cuda_home()
    version = nvcc_version(cuda_home) if cuda_home and torch.version.cuda else None
    plan = plan_kernels(torch.version.cuda, cuda_home, version, os.environ.get("YOLACT_D2_CPU_ONLY") == "1")
    if plan.use_cuda:
        error = nvcc_probe_error(cuda_home)
        if error:
            if os.environ.get("YOLACT_D2_REQUIRE_CUDA") == "1":
                raise RuntimeError(f"{cuda_home}/bin/nvcc cannot compile a test kernel: {error}")
            return KernelPlan(False, (
                f"{os.path.join(cuda_home, 'bin', 'nvcc')} (CUDA {version}) cannot compile a test kernel "
                f"({error}): building the CPU kernels only (the CUDA ops use the pure-PyTorch path)."
            ))
    return plan


def _cpu_extension():
    from torch.utils.cpp_extension import CppExtension

    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    # no FMA contraction: the kernels reproduce the pure-PyTorch path bit for bit
    extra = {"cxx": ["-O3", "-std=c++20", "-ffp-contract=off"]}
    return CppExtension("yolact_d2._C", sources, include_dirs=[os.path.abspath(CSRC)], extra_compile_args=extra)


def _cuda_extension(cuda_home: str):
    import torch
    import torch.utils.cpp_extension as cpp_ext

    os.environ["CUDA_HOME"] = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    cpp_ext.CUDA_HOME = cuda_home
    include_dirs = [os.path.abspath(CSRC)]
    # torch's nvidia wheels carry the CUDA library headers a bare toolkit may lack.
    nv_include = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu13", "include")
    if os.path.isdir(nv_include):
        include_dirs.append(nv_include)
    extra = {
        "cxx": ["-O3", "-std=c++20", "-ffp-contract=off", "-DWITH_CUDA"],
        "nvcc": ["-O3", "--expt-relaxed-constexpr", "--fmad=false", "-DWITH_CUDA"],
    }
    # .cu first: a toolkit that cannot compile fails at once, before the long C++ files start
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cu"))) + sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    ext = cpp_ext.CUDAExtension("yolact_d2._C", sources, include_dirs=include_dirs, extra_compile_args=extra)
    ext.yolact_d2_cuda = True  # what the CPU fallback of a failed build looks for
    return ext


def _build_ext_with_cpu_fallback():
    from torch.utils.cpp_extension import BuildExtension

    class BuildExtWithCpuFallback(BuildExtension):
        """torch's BuildExtension; when the CUDA build fails, builds the CPU kernels instead."""

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as e:  # noqa: BLE001 - reported below, then the CPU build runs (or re-raised)
                cuda = any(getattr(ext, "yolact_d2_cuda", False) for ext in self.extensions)
                if not cuda or os.environ.get("YOLACT_D2_REQUIRE_CUDA") == "1":
                    raise
                reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                log(f"the CUDA build failed ({type(e).__name__}: {reason[:300]}): building the CPU kernels "
                    "only (the CUDA ops use the pure-PyTorch path). Set YOLACT_D2_REQUIRE_CUDA=1 to stop here instead.")
                # the same Extension object, now CPU-only: setuptools keeps private state on it
                for ext in self.extensions:
                    if getattr(ext, "yolact_d2_cuda", False):
                        ext.__dict__.update({k: v for k, v in vars(_cpu_extension()).items() if not k.startswith("_")})
                        ext.yolact_d2_cuda = False
                super().build_extensions()

    return BuildExtWithCpuFallback.with_options(use_ninja=True)


def extensions():
    """(ext_modules, cmdclass entries) for the compiled ops, or none (with a message) without torch."""
    commands = [a for a in sys.argv[1:] if not a.startswith("-")]
    if commands and commands[0] in ("egg_info", "dist_info", "sdist"):
        return [], {}  # metadata / source archive only (pip's first pass): nothing to compile or say yet
    if os.environ.get("YOLACT_D2_NO_EXT") == "1":
        log("YOLACT_D2_NO_EXT=1: installing without the compiled extension (pure-PyTorch ops).")
        return [], {}
    try:
        import torch  # noqa: F401
    except ImportError:
        log("WARNING: torch is not importable in this build environment (pip's build isolation?): "
            "installing WITHOUT the compiled Fast NMS / crop kernels; the pure-PyTorch ops give the "
            "same results, slower. For the kernels: `pip install --no-build-isolation .` next to torch.")
        return [], {}
    plan = current_plan()
    if plan.message:
        log(plan.message)
    if plan.use_cuda:
        return [_cuda_extension(find_cuda_home())], {"build_ext": _build_ext_with_cpu_fallback()}
    return [_cpu_extension()], {"build_ext": _build_ext_with_cpu_fallback()}


# ------------------------------------------------------------------------ configs in the wheel
def config_files():
    """(path under configs/, absolute source) of every shipped config file."""
    root = os.path.join(HERE, "configs")
    found = []
    for pattern in CONFIG_PATTERNS:
        for path in glob.glob(os.path.join(root, "**", pattern), recursive=True):
            found.append((os.path.relpath(path, root), path))
    return sorted(found)


class BuildPyWithConfigs(build_py):
    """Also puts the repository's configs/ into the wheel as yolact_d2/configs (Detectron2 does
    the same with detectron2/model_zoo/configs); an editable install reads configs/ in place."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = os.path.join(self.build_lib, "yolact_d2", "configs")
        for rel, src in config_files():
            dst = os.path.join(target, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)


TOOLS = {  # console script -> yolact_d2/tools module (its main(argv=None) -> exit status)
    "yolact-train-net": "train_net:run_cli",
    "yolact-demo": "demo:main",
    "yolact-benchmark": "benchmark:main",
    "yolact-benchmark-ops": "benchmark_ops:main",
    "yolact-export-model": "export_model:main",
    "yolact-convert-weights": "convert_yolact_weights:main",
    "yolact-convert-imagenet-backbone": "convert_imagenet_backbone:main",
    "yolact-visualize-predictions": "visualize_predictions:main",
}


if __name__ == "__main__":
    ext_modules, cmdclass = extensions()
    setup(
        name="yolact_d2",
        version="0.1.0",
        description="YOLACT and YOLACT++ real-time instance segmentation as a Detectron2 plugin",
        packages=find_packages(exclude=("tests", "tests.*", "tools", "configs", "configs.*", "datasets")),
        # The official checkpoint key layouts the converter checks against.
        package_data={"yolact_d2.checkpoint": ["official_layouts/*.tsv"]},
        python_requires=">=3.9",
        install_requires=["torch", "torchvision", "detectron2", "opencv-python-headless"],
        entry_points={"console_scripts": [f"{name} = yolact_d2.tools.{target}" for name, target in TOOLS.items()]},
        ext_modules=ext_modules,
        cmdclass={"build_py": BuildPyWithConfigs, **cmdclass},
    )
