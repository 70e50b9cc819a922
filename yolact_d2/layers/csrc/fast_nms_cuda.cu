// YOLACT Fast NMS, CUDA kernel. Per-class ranking uses ATen's stable segmented sort (lower index
// first on ties, as the pure path); the suppression test runs here, one block per class: candidate
// j is kept iff no higher-ranked candidate i < j of its class has IoU > threshold. Candidates are
// staged through shared memory a tile at a time; each thread stops testing once suppressed.
// Built with --fmad=false so the IoU equals the pure-PyTorch path bit for bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "box_math.h"
#include "ops.h"

namespace yolact_d2 {
namespace {

constexpr int kThreads = 256;

// cand: (num_classes, k, 4) candidate boxes in rank order; keep: (num_classes, k). Grid: one block
// per class.
template <typename B>
__global__ void fast_nms_suppress_kernel(const B* __restrict__ cand, int64_t k, B thr,
                                         bool* __restrict__ keep) {
  __shared__ B tile_box[kThreads * 4];
  __shared__ B tile_area[kThreads];
  const B* boxes = cand + static_cast<int64_t>(blockIdx.x) * k * 4;
  bool* keep_c = keep + static_cast<int64_t>(blockIdx.x) * k;

  for (int64_t j0 = 0; j0 < k; j0 += kThreads) {  // a chunk of kThreads candidates j
    const int64_t j = j0 + threadIdx.x;
    B bj[4] = {B(0), B(0), B(0), B(0)};
    B area_j = B(0);
    if (j < k) {
      for (int d = 0; d < 4; ++d) bj[d] = boxes[4 * j + d];
      area_j = box_area(bj);
    }
    bool suppressed = false;
    // tiles of earlier candidates i (every thread takes part in the loads and barriers)
    for (int64_t t0 = 0; t0 <= j0; t0 += kThreads) {
      const int64_t i_load = t0 + threadIdx.x;
      if (i_load < k) {
        for (int d = 0; d < 4; ++d) tile_box[4 * threadIdx.x + d] = boxes[4 * i_load + d];
        tile_area[threadIdx.x] = box_area(&tile_box[4 * threadIdx.x]);
      }
      __syncthreads();
      if (j < k && !suppressed) {
        const int64_t i_end = min(static_cast<int64_t>(kThreads), j - t0);  // only i < j
        for (int64_t ii = 0; ii < i_end; ++ii) {
          if (box_iou(&tile_box[4 * ii], tile_area[ii], bj, area_j) > thr) {
            suppressed = true;
            break;
          }
        }
      }
      __syncthreads();
    }
    if (j < k) keep_c[j] = !suppressed;
  }
}

// Launches the suppression for cand (num_classes * k, 4) in the box compute type.
at::Tensor suppress(const at::Tensor& cand, int64_t num_classes, int64_t k, double iou_threshold) {
  auto keep = at::empty({num_classes, k}, cand.options().dtype(at::kBool));
  if (num_classes == 0 || k == 0) return keep;
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (cand.scalar_type() == at::kDouble) {
    fast_nms_suppress_kernel<double><<<num_classes, kThreads, 0, stream>>>(
        cand.data_ptr<double>(), k, iou_threshold, keep.data_ptr<bool>());
  } else {
    // float32 threshold: torch compares a float32 IoU tensor with a Python float in float32
    fast_nms_suppress_kernel<float><<<num_classes, kThreads, 0, stream>>>(
        cand.data_ptr<float>(), k, static_cast<float>(iou_threshold), keep.data_ptr<bool>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

}  // namespace

NmsResult fast_nms_cuda(const at::Tensor& boxes_in, const at::Tensor& scores, double iou_threshold,
                        int64_t top_k, int64_t max_detections, bool class_agnostic) {
  check_fast_nms_args(boxes_in, scores, top_k, max_detections);
  TORCH_CHECK(scores.is_cuda(), "yolact_d2::fast_nms (CUDA kernel): scores must be on a CUDA device");
  c10::cuda::CUDAGuard guard(scores.device());
  const int64_t C = scores.size(0), N = scores.size(1);
  const int64_t k = std::min(top_k, N);
  if (C == 0 || k == 0 || max_detections == 0) {
    auto e = at::empty({0}, scores.options().dtype(at::kLong));
    return {e, e.clone(), at::empty({0}, scores.options())};
  }
  // IoU precision: float64 boxes stay float64, every other float dtype is computed in float32
  const at::Tensor boxes =
      (boxes_in.scalar_type() == at::kDouble ? boxes_in : boxes_in.to(at::kFloat)).contiguous();

  if (class_agnostic) {
    auto best = scores.max(0);  // (N,), (N,): first max wins
    const at::Tensor best_score = std::get<0>(best), best_class = std::get<1>(best);
    const at::Tensor order = std::get<1>(at::sort(best_score, true, 0, true)).narrow(0, 0, k);  // (k,)
    const at::Tensor keep = suppress(boxes.index_select(0, order).contiguous(), 1, k, iou_threshold);
    at::Tensor kept = order.masked_select(keep.view({k}));  // still in score order
    kept = kept.narrow(0, 0, std::min<int64_t>(max_detections, kept.size(0)));
    return {kept, best_class.index_select(0, kept), best_score.index_select(0, kept)};
  }

  auto sorted = at::sort(scores, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  const at::Tensor top_scores = std::get<0>(sorted).narrow(1, 0, k);  // (C, k)
  const at::Tensor top_index = std::get<1>(sorted).narrow(1, 0, k);   // (C, k)
  const at::Tensor cand = boxes.index_select(0, top_index.reshape({-1})).contiguous();  // (C*k, 4)
  const at::Tensor keep = suppress(cand, C, k, iou_threshold);  // (C, k)
  // class-major, rank-minor order, then a stable sort: equal scores keep (class, rank) order
  const at::Tensor kept_scores = top_scores.masked_select(keep);
  const at::Tensor kept_index = top_index.masked_select(keep);
  const at::Tensor kept_class =
      at::arange(C, scores.options().dtype(at::kLong)).unsqueeze(1).expand({C, k}).masked_select(keep);
  at::Tensor final_order = std::get<1>(at::sort(kept_scores, true, 0, true));
  final_order = final_order.narrow(0, 0, std::min<int64_t>(max_detections, final_order.size(0)));
  return {kept_index.index_select(0, final_order), kept_class.index_select(0, final_order),
          kept_scores.index_select(0, final_order)};
}

}  // namespace yolact_d2
