// YOLACT mask crop, CUDA kernel: one block per output row (grid-stride), threads across the row;
// each pixel is either copied (inside the mask's padded box) or written as +0.0, so the input is
// read only inside the box. Equals crop_masks_pytorch bit for bit.
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

// in/out: (N, H, W) contiguous; boxes: (N, 4) normalised xyxy in the coordinate type B.
template <typename scalar_t, typename B>
__global__ void crop_masks_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                  const B* __restrict__ boxes, int64_t rows, int64_t H, int64_t W,
                                  int64_t padding) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t n = r / H, y = r % H;
    const B* b = boxes + 4 * n;
    int64_t x_lo, x_hi, y_lo, y_hi;
    crop_range<B>(b[0], b[2], W, padding, &x_lo, &x_hi);
    crop_range<B>(b[1], b[3], H, padding, &y_lo, &y_hi);
    if (y < y_lo || y >= y_hi) x_hi = x_lo;  // whole row outside
    const scalar_t* src = in + r * W;
    scalar_t* dst = out + r * W;
    for (int64_t x = threadIdx.x; x < W; x += blockDim.x)
      dst[x] = (x >= x_lo && x < x_hi) ? src[x] : static_cast<scalar_t>(0.0f);
  }
}

}  // namespace

at::Tensor crop_masks_cuda(const at::Tensor& masks_in, const at::Tensor& boxes_in, int64_t padding) {
  check_crop_args(masks_in, boxes_in, padding);
  TORCH_CHECK(masks_in.is_cuda(), "yolact_d2::crop_masks (CUDA kernel): masks must be on a CUDA device");
  c10::cuda::CUDAGuard guard(masks_in.device());
  const at::Tensor masks = masks_in.contiguous();
  auto out = at::empty(masks.sizes(), masks.options().memory_format(at::MemoryFormat::Contiguous));
  if (masks.numel() == 0) return out;
  const int64_t H = masks.size(1), W = masks.size(2), rows = masks.size(0) * H;
  // crop coordinates: float64 boxes stay float64, every other float dtype is computed in float32
  const bool box_double = boxes_in.scalar_type() == at::kDouble;
  const at::Tensor boxes = (box_double ? boxes_in : boxes_in.to(at::kFloat)).contiguous();
  const int threads = static_cast<int>(std::min<int64_t>(256, ((W + 31) / 32) * 32));
  const int blocks = static_cast<int>(std::min<int64_t>(rows, 65535));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "crop_masks_cuda", [&] {
    if (box_double) {
      crop_masks_kernel<scalar_t, double><<<blocks, threads, 0, stream>>>(
          masks.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), boxes.data_ptr<double>(), rows, H, W, padding);
    } else {
      crop_masks_kernel<scalar_t, float><<<blocks, threads, 0, stream>>>(
          masks.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), boxes.data_ptr<float>(), rows, H, W, padding);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace yolact_d2
