"""ONNX Runtime sessions on a named runtime: "cpu", "cuda", or "tensorrt" (NVIDIA TensorRT through
ONNX Runtime's TensorRT execution provider, fp16 optional), with no silent fallback.

    session = onnx_session("yolact.onnx", runtime="tensorrt", fp16=True)

Why own code: ONNX Runtime quietly runs a model on the CPU when a requested provider is missing
(a CPU-only wheel) or fails to load (no libnvinfer / libcudnn): it only logs a warning. A
"tensorrt" session that is really a CPU one would report CPU speed as TensorRT speed, so the
session's providers are checked after creation and a fallback is an error naming what is missing.
TensorRT is an optional dependency: nothing here is imported by `import yolact_d2`, and asking for
it without `onnxruntime-gpu` (built with TensorRT) and the TensorRT libraries says so.
(torch-tensorrt is not used: ONNX Runtime's provider runs our exported graphs as they are.)
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["RUNTIMES", "runtime_providers", "onnx_session", "missing_runtime_reason"]

RUNTIMES = ("cpu", "cuda", "tensorrt")
_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_INSTALL_HINT = {
    "cuda": "pip install onnxruntime-gpu (its CUDA / cuDNN major versions must match the machine's)",
    "tensorrt": "pip install onnxruntime-gpu tensorrt (an onnxruntime-gpu built with the TensorRT "
                "execution provider, and TensorRT's libnvinfer on the library path)",
}

Provider = Union[str, Tuple[str, Dict[str, str]]]


def runtime_providers(runtime: str, fp16: bool = False, engine_cache: Optional[str] = None) -> List[Provider]:
    """ONNX Runtime's provider list for `runtime`, most preferred first. "tensorrt" keeps CUDA and
    CPU behind it for the nodes TensorRT does not take (ONNX Runtime splits the graph); fp16 lets
    TensorRT choose half-precision kernels; engine_cache: a folder where TensorRT keeps built
    engines (the first session of a model builds one: tens of seconds to minutes)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}.")
    if fp16 and runtime != "tensorrt":
        raise ValueError(
            f"fp16=True is a TensorRT option (runtime='tensorrt'); runtime={runtime!r} runs the graph as exported."
        )
    if runtime == "cpu":
        return ["CPUExecutionProvider"]
    if runtime == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    options = {"trt_fp16_enable": "True" if fp16 else "False"}
    if engine_cache:
        os.makedirs(engine_cache, exist_ok=True)
        options.update(trt_engine_cache_enable="True", trt_engine_cache_path=engine_cache)
    return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider", "CPUExecutionProvider"]


def missing_runtime_reason(runtime: str) -> Optional[str]:
    """None when this onnxruntime offers `runtime`'s provider, else why not and what to install."""
    import onnxruntime as ort

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}.")
    available = ort.get_available_providers()
    if _PROVIDER[runtime] in available:
        return None
    return (
        f"runtime={runtime!r} needs ONNX Runtime's {_PROVIDER[runtime]}, which this onnxruntime "
        f"{ort.__version__} does not have (it offers {', '.join(available)}); {_INSTALL_HINT[runtime]}."
    )


def onnx_session(path: str, runtime: str = "cpu", fp16: bool = False, threads: int = 0,
                 engine_cache: Optional[str] = None, providers: Optional[Sequence[Provider]] = None):
    """An onnxruntime.InferenceSession of `path` that really runs on `runtime` (or on the explicit
    `providers` list, whose first entry is then checked the same way)."""
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model '{path}' does not exist; make it with tools/export_model.py.")
    if providers is None:
        providers = runtime_providers(runtime, fp16, engine_cache)
        reason = missing_runtime_reason(runtime)
        if reason:
            raise RuntimeError(reason)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(path, options, providers=list(providers))
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if session.get_providers()[0] != wanted:
        raise RuntimeError(
            f"onnx_session: ONNX Runtime fell back from {wanted} to {session.get_providers()[0]} for '{path}' "
            "(the provider's libraries did not load; onnxruntime's log above says which). "
            + (_INSTALL_HINT.get(runtime, "") if wanted == _PROVIDER.get(runtime) else "")
        )
    return session
