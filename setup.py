"""Install yolact_d2 and build its C++/CUDA extension (yolact_d2._C).

The extension is built with CUDA kernels whenever nvcc is found (CUDA_HOME or PATH), otherwise
CPU-only. Build with `pip install --no-build-isolation -e .`: the build needs the installed torch.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("yolact_d2", "layers", "csrc")
# Turing (7.5) to Hopper (9.0); PTX lets newer GPUs JIT the 9.0 code.
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"


def _find_cuda_home():
    """CUDA_HOME if set, else the toolkit behind nvcc (resolving /usr/local/bin wrapper scripts)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    for candidate in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


def _extensions():
    if os.environ.get("YOLACT_D2_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "*.cu")))
    cuda_home = _find_cuda_home()
    force_cpu = os.environ.get("YOLACT_D2_CPU_ONLY") == "1"
    use_cuda = bool(cuda_sources) and cuda_home is not None and torch.version.cuda and not force_cpu
    # no FMA contraction: the kernels reproduce the pure-PyTorch path bit for bit
    extra = {"cxx": ["-O3", "-std=c++20", "-ffp-contract=off"]}
    if use_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        import torch.utils.cpp_extension as cpp_ext

        cpp_ext.CUDA_HOME = cuda_home
        include_dirs = [os.path.abspath(CSRC)]
        # torch's nvidia wheels carry the CUDA library headers a bare toolkit may lack.
        nv_include = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu13", "include")
        if os.path.isdir(nv_include):
            include_dirs.append(nv_include)
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "--fmad=false", "-DWITH_CUDA"]
        extra["cxx"].append("-DWITH_CUDA")
        ext = CUDAExtension(
            "yolact_d2._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            extra_compile_args=extra,
        )
    else:
        ext = CppExtension(
            "yolact_d2._C", sources, include_dirs=[os.path.abspath(CSRC)], extra_compile_args=extra
        )
    if not sources:
        return [], {}
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="yolact_d2",
    version="0.1.0",
    description="YOLACT and YOLACT++ real-time instance segmentation as a Detectron2 plugin",
    packages=find_packages(exclude=("tests", "tools", "configs", "datasets")),
    # The official checkpoint key layouts the converter checks against.
    package_data={"yolact_d2.checkpoint": ["official_layouts/*.tsv"]},
    python_requires=">=3.9",
    install_requires=["torch", "torchvision", "detectron2", "opencv-python-headless"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
