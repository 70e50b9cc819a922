"""yolact_d2.deploy.runtimes: ONNX Runtime on a named runtime (cpu / cuda / tensorrt), no silent fallback.

Oracles: this machine's real onnxruntime (a CPU build: it has no CUDA or TensorRT provider), a
hand-made one-node ONNX graph, and ONNX Runtime's own fallback when told a provider exists that it
cannot load. The TensorRT path itself runs in tools/gpu_check.py's onnx_runtimes step on a GPU.
"""
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from yolact_d2.deploy import runtimes
from yolact_d2.deploy.onnx import OnnxPredictor

GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
needs_cpu_only_ort = pytest.mark.skipif(
    bool(GPU_PROVIDERS & set(ort.get_available_providers())), reason="this onnxruntime has GPU providers"
)


@pytest.fixture
def identity_onnx(tmp_path):
    """y = x, one Identity node (float32 (2, 3))."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = str(tmp_path / "identity.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_cpu_session_runs(identity_onnx):
    session = runtimes.onnx_session(identity_onnx, "cpu")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert session.get_providers() == ["CPUExecutionProvider"]
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x)


def test_provider_lists(tmp_path):
    assert runtimes.runtime_providers("cpu") == ["CPUExecutionProvider"]
    assert runtimes.runtime_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    cache = str(tmp_path / "engines")
    assert runtimes.runtime_providers("tensorrt", fp16=True, engine_cache=cache) == [
        ("TensorrtExecutionProvider",
         {"trt_fp16_enable": "True", "trt_engine_cache_enable": "True", "trt_engine_cache_path": cache}),
        "CUDAExecutionProvider", "CPUExecutionProvider",
    ]
    with pytest.raises(ValueError, match="fp16=True is a TensorRT option"):
        runtimes.runtime_providers("cpu", fp16=True)
    with pytest.raises(ValueError, match="runtime must be one of cpu, cuda, tensorrt"):
        runtimes.runtime_providers("openvino")


@needs_cpu_only_ort
def test_missing_tensorrt_is_a_clear_error(identity_onnx):
    for runtime, provider in (("tensorrt", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider")):
        with pytest.raises(RuntimeError, match=rf"needs ONNX Runtime's {provider}.*onnxruntime-gpu"):
            OnnxPredictor(identity_onnx, runtime=runtime)


def test_fallback_at_load_is_an_error(identity_onnx, monkeypatch):
    """ONNX Runtime told that CUDA is there quietly builds a CPU session: that is refused."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA really is available here")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="fell back from CUDAExecutionProvider to CPUExecutionProvider"):
        runtimes.onnx_session(identity_onnx, "cuda")
    with pytest.raises(RuntimeError, match="fell back from CUDAExecutionProvider"):  # an explicit list too
        OnnxPredictor(identity_onnx, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_import_yolact_d2_loads_no_runtime():
    code = "import sys, yolact_d2; print(sorted(m for m in ('onnxruntime', 'tensorrt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
