"""yolact_d2.deploy.realtime: the fast path (fixed-shape graph per input size, CUDA graphs, pinned
upload) and the Predictor's `fast_path` option.

Oracle: the same Predictor's eager path (Yolact.inference + YolactPostProcessor with the compiled
kernels), same model and weights, called on the same batches. On the CPU the fast path runs
without CUDA graphs (its CPU form) and must give the eager detections bit for bit in fp32.
The tests named *cuda* run on a GPU machine (tools/gpu_check.py's op_tests step) and are skipped
here with the reason; without one, the graph's forward runs on fake CUDA tensors, where any
data-dependent shape or host read (which a CUDA graph cannot capture) raises, and no op may read a
host tensor (e.g. a list index copied to the device at each call: the BGR -> RGB flip was one).
"""
import os

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import inference_fixtures as fx
from yolact_d2 import Predictor
from yolact_d2.deploy.precision import PrecisionError, check_precision
from yolact_d2.deploy.realtime import RealtimeEngine, RealtimeError, resolve_fast_path

REPO = fx.REPO
PLUS_CONFIG = os.path.join(REPO, "configs", "yolact", "yolact_plus_R_50_FPN_550.py")
TINY_CONFIG = os.path.join(REPO, "configs", "shapes", "yolact_shapes_tiny.py")
THRESH = ["model.post_processor.score_thresh=0.3"]  # fewer than max_detections: padding rows exist
CASES = {  # name: (config, overrides, image sizes: two of the first (one batch), one of the second)
    "R50": (fx.R50_CONFIG, fx.SMALL_OPTS + THRESH, [(120, 160), (90, 200)]),
    # YOLACT++'s mask-IoU net needs prototypes >= 63 px: input 256
    "YOLACT++ R50": (PLUS_CONFIG, ["model.input_size=256"] + THRESH, [(120, 160), (90, 200)]),
    # the seeded tiny model's top scores lie in 0.464..0.478: this keeps 1..16 of its 20 rows
    "shapes tiny": (TINY_CONFIG, ["model.post_processor.score_thresh=0.4685"], [(64, 64), (48, 80)]),
}
CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device here: the CUDA-graph / pinned-upload form runs in tools/gpu_check.py's op_tests step"


def _predictor(case, tmp_path, extra_opts=(), **kwargs):
    config, opts, _ = CASES[case]
    opts = opts + list(extra_opts)
    weights = fx.write_checkpoint(str(tmp_path / "seeded.pth"), seed=0, config=config, opts=opts)
    return Predictor(config, weights, device=kwargs.pop("device", "cpu"), opts=opts, **kwargs)


def _images(case):
    (h1, w1), (h2, w2) = CASES[case][2]
    return [fx.test_image(h1, w1, seed=1), fx.test_image(h1, w1, seed=2), fx.test_image(h2, w2, seed=3)]


def _eager(predictor, images):
    """The Predictor's eager path on the same model (the fast path switched off for the call)."""
    engine, predictor.fast_path = predictor.fast_path, None
    try:
        return predictor(images)
    finally:
        predictor.fast_path = engine


def _assert_identical(got, want):
    assert got.image_size == want.image_size
    assert len(got) == len(want)
    for field in ("pred_classes", "scores", "pred_masks") + (("mask_scores",) if want.has("mask_scores") else ()):
        a, b = got.get(field), want.get(field)
        assert a.dtype == b.dtype and torch.equal(a, b), field
    assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _predictor("shapes tiny", tmp_path_factory.mktemp("tiny"), fast_path=True)


@pytest.mark.parametrize("case", [pytest.param("R50", marks=pytest.mark.slow),
                                  pytest.param("YOLACT++ R50", marks=pytest.mark.slow), "shapes tiny"])
def test_fast_path_equals_eager_fp32(case, tmp_path):
    predictor = _predictor(case, tmp_path, fast_path=True)
    engine = predictor.fast_path
    assert engine is not None and not engine.cuda_graphs  # the CPU form
    images = _images(case)
    got = predictor(images)  # two same-size images run as one batch, the third on its own
    want = _eager(predictor, images[:2]) + [_eager(predictor, images[2])]
    assert engine.sizes == [(2,) + images[0].shape[:2], (1,) + images[2].shape[:2]]
    counts = [len(w) for w in want]
    assert all(0 < n < predictor.model.post_processor.max_detections for n in counts), counts
    for g, w in zip(got, want):
        _assert_identical(g, w)
    assert got[0].pred_masks.shape[1:] == images[0].shape[:2]  # full-size masks
    if case == "YOLACT++ R50":
        assert want[0].has("mask_scores")
    single = predictor(images[2])  # one image in, one Instances out
    _assert_identical(single, want[2])


@pytest.mark.parametrize("setting", ["model.post_processor.class_agnostic=True", "model.resize_mode=shortest_edge",
                                     "model.input_format=RGB", "model.to_rgb=True"])
def test_fast_path_equals_eager_other_settings(setting, tmp_path):
    predictor = _predictor("shapes tiny", tmp_path, [setting], fast_path=True)
    images = _images("shapes tiny")
    for image in (images[0], images[2]):
        _assert_identical(predictor(image), _eager(predictor, image))


def test_bf16_fast_path_equals_eager_bf16(tmp_path):
    try:
        check_precision("bf16", "cpu")
    except PrecisionError as e:
        pytest.skip(f"bf16 cannot run on this CPU: {e}")
    predictor = _predictor("shapes tiny", tmp_path, fast_path=True, precision="bf16")
    assert predictor.fast_path.graph_module.network_dtype == torch.bfloat16
    image = _images("shapes tiny")[0]
    _assert_identical(predictor(image), _eager(predictor, image))


def test_size_cache_adds_a_size_once_and_reuses_it(tiny):
    engine = RealtimeEngine(tiny.model, max_sizes=2)
    a, a2, _, = _images("shapes tiny")
    b = fx.test_image(48, 80, seed=4)
    c = fx.test_image(40, 40, seed=5)
    engine([a])
    first = engine.entry(1, 64, 64)
    engine([a2])
    assert engine.sizes == [(1, 64, 64)] and engine.entry(1, 64, 64) is first and first.runs == 2
    assert np.array_equal(first.frames[0].numpy(), a2)  # the static input holds the last frame
    engine([b])
    assert engine.sizes == [(1, 64, 64), (1, 48, 80)]
    engine([a])  # (1, 64, 64) is now the most recent: the next new size drops (1, 48, 80)
    engine([c])
    assert engine.sizes == [(1, 64, 64), (1, 40, 40)] and engine.entry(1, 64, 64) is first
    assert first.runs == 3 and first.graph is None


def test_pinned_upload_skipped_on_cpu_with_the_reason(tiny):
    engine = tiny.fast_path
    if CUDA and engine.device.type == "cuda":
        pytest.fail("this test is for the CPU form")
    entry = engine.entry(1, 64, 64)
    assert not engine.pinned and entry.upload_done is None
    assert entry.staging is entry.frames and entry.staging.device.type == "cpu"  # frames written in place
    assert "no host-to-device upload" in engine.pinned_reason and "'cpu'" in engine.pinned_reason
    assert "CUDA graphs need a CUDA device" in engine.cuda_graphs_reason


def test_run_padded_outputs_and_copies(tiny):
    engine = tiny.fast_path
    a, a2, _ = _images("shapes tiny")
    boxes, scores, classes, masks, counts = engine.run_padded([a, a2])
    want = _eager(tiny, [a, a2])
    d = tiny.model.post_processor.max_detections
    assert boxes.shape == (2, d, 4) and masks.shape == (2, d, 64, 64) and masks.dtype == torch.bool
    assert counts.tolist() == [len(w) for w in want]
    for i, w in enumerate(want):
        n = len(w)
        assert torch.equal(classes[i, :n], w.pred_classes) and torch.equal(scores[i, :n], w.scores)
        assert torch.all(classes[i, n:] == -1) and torch.all(scores[i, n:] == 0) and not masks[i, n:].any()
    kept = scores.clone()
    engine.run_padded([a2, a])  # same size: the static buffers are overwritten, the copies are not
    assert torch.equal(scores, kept)
    with pytest.raises(RealtimeError, match="one shape"):
        engine.run_padded([a, fx.test_image(48, 80)])


def test_fast_path_option_defaults():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_fast_path(None, cuda, "fp32") == {} and resolve_fast_path(None, cuda, "fp16") == {}
    assert resolve_fast_path(None, cpu, "fp32") is None and resolve_fast_path(None, cpu, "bf16") is None
    assert resolve_fast_path(None, cpu, "int8") is None
    assert resolve_fast_path(True, cpu, "fp32") == {} and resolve_fast_path(False, cuda, "fp32") is None
    assert resolve_fast_path({"cuda_graphs": False}, cuda, "fp32") == {"cuda_graphs": False}
    with pytest.raises(TypeError, match="fast_path must be"):
        resolve_fast_path("yes", cpu, "fp32")
    with pytest.raises(RealtimeError, match="int8"):
        resolve_fast_path(True, cpu, "int8")


def test_predictor_default_on_cpu_is_eager(tmp_path):
    predictor = _predictor("shapes tiny", tmp_path)
    assert predictor.fast_path is None


def test_clear_errors(tiny, tmp_path):
    with pytest.raises(RealtimeError, match="cuda_graphs=True needs a CUDA device.*'cpu'"):
        RealtimeEngine(tiny.model, cuda_graphs=True)
    with pytest.raises(RealtimeError, match="cuda_graphs=True needs a CUDA device"):
        _predictor("shapes tiny", tmp_path, fast_path={"cuda_graphs": True})
    with pytest.raises(RealtimeError, match="max_sizes must be >= 1"):
        RealtimeEngine(tiny.model, max_sizes=0)
    with pytest.raises(RealtimeError, match="capture_after must be >= 1"):
        RealtimeEngine(tiny.model, capture_after=0)
    tiny.model.train()
    try:
        with pytest.raises(RealtimeError, match="training mode"):
            RealtimeEngine(tiny.model)
    finally:
        tiny.model.eval()


def test_standard_nms_cannot_be_captured(tmp_path):
    predictor = _predictor("shapes tiny", tmp_path, ["model.post_processor.standard_nms=True"], fast_path=True)
    assert not predictor.fast_path.cuda_graphs and "standard NMS" in predictor.fast_path.cuda_graphs_reason
    image = _images("shapes tiny")[0]
    _assert_identical(predictor(image), _eager(predictor, image))  # eager form of the same graph
    with pytest.raises(RealtimeError, match="standard NMS.*cannot capture"):
        RealtimeEngine(predictor.model, cuda_graphs=True)


# ------------------------------------------------------------------ capturability, without a GPU
class _HostTensorReads(TorchDispatchMode):
    """Records every op on fake CUDA tensors that reads a host (CPU) tensor: a copy to the device
    at each call (e.g. `x[:, [2, 1, 0]]`'s list index), which a CUDA graph cannot hold."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in tensors) and any(t.device.type == "cuda" for t in tensors):
            self.seen.append(f"{func}: {[(t.device.type, tuple(t.shape)) for t in tensors]}")
        return out


def _fake_cuda_outputs(case, extra_opts=(), dtype=torch.float32):
    """FrameGraph's forward on fake CUDA tensors (FakeTensorMode: shapes, dtypes and devices, no
    data) -> (outputs, host tensor reads). An op whose output shape depends on the data or that
    reads a value back to the host (nonzero, .item(), bool(tensor): what a CUDA graph cannot
    capture) raises there; a host tensor copied in is recorded."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.func import functional_call

    from yolact_d2.deploy.optimize import optimize_for_inference
    from yolact_d2.deploy.precision import cast_network
    from yolact_d2.deploy.realtime import FrameGraph

    config, opts, _ = CASES[case]
    model = optimize_for_inference(fx.build_model(opts=opts + list(extra_opts), config=config))
    if dtype != torch.float32:
        cast_network(model, dtype)
    graph = FrameGraph(model).eval()
    mode = FakeTensorMode()
    state = {k: mode.from_tensor(v) for k, v in list(graph.named_parameters()) + list(graph.named_buffers())}
    with mode, torch.inference_mode():
        state = {k: v.to("cuda") for k, v in state.items()}
        frames = torch.empty(2, 90, 120, 3, dtype=torch.uint8, device="cuda")
        with _HostTensorReads() as reads:
            outputs = functional_call(graph, state, (frames,))
        return outputs, reads.seen


@pytest.mark.parametrize("case, dtype, opts", [
    ("shapes tiny", torch.float32, []), ("shapes tiny", torch.float16, []), ("shapes tiny", torch.bfloat16, []),
    ("shapes tiny", torch.float32, ["model.to_rgb=True"]),  # the BGR -> RGB flip (the shapes models skip it)
    ("shapes tiny", torch.float32, ["model.to_rgb=True", "model.resize_mode=shortest_edge"]),  # + canvas padding
    pytest.param("YOLACT++ R50", torch.float16, [], marks=pytest.mark.slow),  # DCN, mask re-scoring, RGB
])
def test_graph_is_capturable_on_fake_gpu_tensors(case, dtype, opts):
    outputs, host_reads = _fake_cuda_outputs(case, opts, dtype=dtype)
    assert host_reads == []
    d = 20 if case == "shapes tiny" else 100  # max_detections
    assert [tuple(o.shape) for o in outputs[:5]] == [(2, d, 4), (2, d), (2, d), (2, d, 90, 120), (2,)]
    assert all(o.device.type == "cuda" for o in outputs)
    assert [o.dtype for o in outputs[:5]] == [torch.float32, torch.float32, torch.int64, torch.bool, torch.int64]
    assert len(outputs) == (6 if case == "YOLACT++ R50" else 5)


def test_fake_tensor_check_sees_a_host_read():
    # the oracle that the check above can fail: standard NMS keeps a data-dependent count
    from torch._subclasses.fake_tensor import DynamicOutputShapeException

    with pytest.raises(DynamicOutputShapeException):
        _fake_cuda_outputs("shapes tiny", ["model.post_processor.standard_nms=True"])


def test_host_tensor_check_sees_a_list_index():
    # the oracle that the host-read check can fail: the old flip, a list index on a CUDA tensor
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), _HostTensorReads() as reads:
        x = torch.empty(1, 3, 4, 4, device="cuda")
        torch.flip(x, dims=[1])
        assert reads.seen == []
        x[:, [2, 1, 0]]
    assert len(reads.seen) == 1 and "_to_copy" in reads.seen[0] and "('cpu', (3,))" in reads.seen[0]


# ------------------------------------------------------------------ on a GPU (gpu_check op_tests)
@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graph_fast_path_matches_eager_cuda(precision, tmp_path):
    predictor = _predictor("R50", tmp_path, device="cuda", precision=precision)
    engine = predictor.fast_path
    assert engine is not None and engine.cuda_graphs and engine.pinned  # the default on CUDA
    images = _images("R50")
    got = [predictor(im) for im in images]
    entry = engine.entry(1, *images[0].shape[:2])
    assert entry.graph is not None and entry.graph_error is None and entry.staging.is_pinned()
    assert entry.runs == 2  # image 0 ran without a graph (capture_after=2), image 1 captured and replayed it
    assert engine.entry(1, *images[2].shape[:2]).graph is None  # a size seen once: not captured
    want = [_eager(predictor, im) for im in images]
    for g, w in zip(got, want):
        assert g.pred_masks.device.type == "cuda" and len(g) == len(w)
        assert torch.equal(g.pred_classes, w.pred_classes)
        assert (g.scores - w.scores).abs().max() <= (1e-5 if precision == "fp32" else 1e-3)
