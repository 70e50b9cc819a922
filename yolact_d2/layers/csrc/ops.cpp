// Registers the yolact_d2 operators with PyTorch's dispatcher (schemas + CPU/CUDA kernels) and
// defines the Python module yolact_d2._C, whose import performs the registration.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

namespace yolact_d2 {

namespace {
bool is_float_dtype(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble;
}
}  // namespace

void check_fast_nms_args(const at::Tensor& boxes, const at::Tensor& scores, int64_t top_k,
                         int64_t max_detections) {
  TORCH_CHECK(is_float_dtype(boxes), "yolact_d2::fast_nms: boxes must be a float tensor, got ",
              boxes.scalar_type());
  TORCH_CHECK(is_float_dtype(scores), "yolact_d2::fast_nms: scores must be a float tensor, got ",
              scores.scalar_type());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4,
              "yolact_d2::fast_nms: boxes must have shape (N, 4), got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 2 && scores.size(1) == boxes.size(0),
              "yolact_d2::fast_nms: scores must have shape (C, N) with N = ", boxes.size(0),
              ", got ", scores.sizes());
  TORCH_CHECK(boxes.device() == scores.device(),
              "yolact_d2::fast_nms: boxes and scores must be on the same device, got ",
              boxes.device(), " and ", scores.device());
  TORCH_CHECK(top_k >= 0, "yolact_d2::fast_nms: top_k must be >= 0, got ", top_k);
  TORCH_CHECK(max_detections >= 0, "yolact_d2::fast_nms: max_detections must be >= 0, got ",
              max_detections);
}

void check_crop_args(const at::Tensor& masks, const at::Tensor& boxes, int64_t padding) {
  TORCH_CHECK(is_float_dtype(masks), "yolact_d2::crop_masks: masks must be a float tensor, got ",
              masks.scalar_type());
  TORCH_CHECK(is_float_dtype(boxes), "yolact_d2::crop_masks: boxes must be a float tensor, got ",
              boxes.scalar_type());
  TORCH_CHECK(masks.dim() == 3, "yolact_d2::crop_masks: masks must have shape (N, H, W), got ",
              masks.sizes());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == masks.size(0),
              "yolact_d2::crop_masks: boxes must have shape (N, 4) with N = ", masks.size(0),
              ", got ", boxes.sizes());
  TORCH_CHECK(masks.device() == boxes.device(),
              "yolact_d2::crop_masks: masks and boxes must be on the same device, got ",
              masks.device(), " and ", boxes.device());
  TORCH_CHECK(padding >= 0, "yolact_d2::crop_masks: padding must be >= 0, got ", padding);
}

}  // namespace yolact_d2

TORCH_LIBRARY(yolact_d2, m) {
  m.def(
      "fast_nms(Tensor boxes, Tensor scores, float iou_threshold, int top_k, int max_detections, "
      "bool class_agnostic) -> (Tensor keep, Tensor classes, Tensor scores)");
  m.def("crop_masks(Tensor masks, Tensor boxes, int padding) -> Tensor");
  m.def("paste_masks(Tensor masks, int height, int width, float threshold) -> Tensor");
}

TORCH_LIBRARY_IMPL(yolact_d2, CPU, m) {
  m.impl("fast_nms", &yolact_d2::fast_nms_cpu);
  m.impl("crop_masks", &yolact_d2::crop_masks_cpu);
  m.impl("paste_masks", &yolact_d2::paste_masks_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(yolact_d2, CUDA, m) {
  m.impl("fast_nms", &yolact_d2::fast_nms_cuda);
  m.impl("crop_masks", &yolact_d2::crop_masks_cuda);
}
#endif

// A Python module with no functions: importing it runs the static registrations above.
static struct PyModuleDef yolact_d2_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&yolact_d2_c_module); }
