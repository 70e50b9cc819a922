// Declarations of the yolact_d2 operators' kernels (registered in ops.cpp).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace yolact_d2 {

using NmsResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;  // keep, classes, scores

// Argument checks shared by the CPU and CUDA entry points (the Python wrapper checks first; these
// protect direct torch.ops.yolact_d2.* calls).
void check_fast_nms_args(const at::Tensor& boxes, const at::Tensor& scores, int64_t top_k,
                         int64_t max_detections);
void check_crop_args(const at::Tensor& masks, const at::Tensor& boxes, int64_t padding);

NmsResult fast_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                       int64_t top_k, int64_t max_detections, bool class_agnostic);
at::Tensor crop_masks_cpu(const at::Tensor& masks, const at::Tensor& boxes, int64_t padding);
// CPU only: on CUDA the full-image F.interpolate is fast and the Python wrapper uses it.
at::Tensor paste_masks_cpu(const at::Tensor& masks, int64_t height, int64_t width, double threshold);

#ifdef WITH_CUDA
NmsResult fast_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                        int64_t top_k, int64_t max_detections, bool class_agnostic);
at::Tensor crop_masks_cuda(const at::Tensor& masks, const at::Tensor& boxes, int64_t padding);
#endif

}  // namespace yolact_d2
