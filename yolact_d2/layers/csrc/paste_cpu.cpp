// YOLACT full-image mask paste, CPU kernel: out[i] = bilinear_upsample(masks[i]) > threshold,
// equal bit for bit to F.interpolate(masks[None], (H, W), mode="bilinear", align_corners=False)[0]
// > threshold on PyTorch's CPU kernel. Why own code: a cropped mask is zero outside its box, so
// only the output window whose bilinear taps reach its non-zero prototype pixels is computed;
// elsewhere the upsampled value is exactly 0, which is not > threshold (threshold >= 0). With 100
// small detections at 640x480 this is ~10x less work than upsampling every full mask.
//
// Rounding follows PyTorch's separable kernel: source index src = fma(in/out, dst + 0.5, -0.5)
// clamped at 0, i0 = min(floor(src), in - 1), i1 = min(i0 + 1, in - 1), w1 = clamp(src - i0, 0, 1),
// w0 = 1 - w1; first along the width, then the height, each step fma(a, w0, b * w1). The file is
// compiled with -ffp-contract=off, so the only fused multiply-adds are the explicit std::fma calls.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops.h"

namespace yolact_d2 {
namespace {

struct Taps {
  std::vector<int64_t> i0, i1;
  std::vector<float> w0, w1;
};

Taps bilinear_taps(int64_t in_size, int64_t out_size) {
  Taps t;
  t.i0.resize(out_size);
  t.i1.resize(out_size);
  t.w0.resize(out_size);
  t.w1.resize(out_size);
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  for (int64_t d = 0; d < out_size; ++d) {
    const float src = std::max(std::fma(scale, static_cast<float>(d) + 0.5f, -0.5f), 0.0f);
    const int64_t i0 = std::min(static_cast<int64_t>(src), in_size - 1);
    const float w1 = std::min(std::max(src - static_cast<float>(i0), 0.0f), 1.0f);
    t.i0[d] = i0;
    t.i1[d] = std::min(i0 + 1, in_size - 1);
    t.w1[d] = w1;
    t.w0[d] = 1.0f - w1;
  }
  return t;
}

// First output index whose taps reach source index `lo` (i1 >= lo), and one past the last whose
// taps reach `hi` (i0 <= hi): both tap arrays are non-decreasing.
void window(const Taps& t, int64_t lo, int64_t hi, int64_t* begin, int64_t* end) {
  *begin = std::lower_bound(t.i1.begin(), t.i1.end(), lo) - t.i1.begin();
  *end = std::upper_bound(t.i0.begin(), t.i0.end(), hi) - t.i0.begin();
}

void paste_one(const float* m, int64_t hp, int64_t wp, const Taps& ty, const Taps& tx, float threshold,
               bool* out, int64_t width) {
  // the mask's non-zero extent (NaN counts as non-zero, as in the full upsampling)
  int64_t r_lo = hp, r_hi = -1, c_lo = wp, c_hi = -1;
  for (int64_t r = 0; r < hp; ++r) {
    const float* row = m + r * wp;
    for (int64_t c = 0; c < wp; ++c) {
      if (row[c] != 0.0f) {
        r_lo = std::min(r_lo, r);
        r_hi = r;
        c_lo = std::min(c_lo, c);
        c_hi = std::max(c_hi, c);
      }
    }
  }
  if (r_hi < 0) return;
  int64_t ya, yb, xa, xb;
  window(ty, r_lo, r_hi, &ya, &yb);
  window(tx, c_lo, c_hi, &xa, &xb);
  if (ya >= yb || xa >= xb) return;
  const int64_t top = ty.i0[ya], bottom = ty.i1[yb - 1], nx = xb - xa;
  std::vector<float> tmp((bottom - top + 1) * nx);  // width-interpolated prototype rows
  for (int64_t r = top; r <= bottom; ++r) {
    const float* row = m + r * wp;
    float* t = tmp.data() + (r - top) * nx;
    for (int64_t x = xa; x < xb; ++x) {
      t[x - xa] = std::fma(row[tx.i0[x]], tx.w0[x], row[tx.i1[x]] * tx.w1[x]);
    }
  }
  for (int64_t y = ya; y < yb; ++y) {
    const float* a = tmp.data() + (ty.i0[y] - top) * nx;
    const float* b = tmp.data() + (ty.i1[y] - top) * nx;
    const float wa = ty.w0[y], wb = ty.w1[y];
    bool* o = out + y * width + xa;
    for (int64_t x = 0; x < nx; ++x) o[x] = std::fma(a[x], wa, b[x] * wb) > threshold;
  }
}

}  // namespace

at::Tensor paste_masks_cpu(const at::Tensor& masks_in, int64_t height, int64_t width, double threshold) {
  TORCH_CHECK(masks_in.device().is_cpu(), "yolact_d2::paste_masks (CPU kernel): masks must be on CPU");
  TORCH_CHECK(masks_in.scalar_type() == at::kFloat, "yolact_d2::paste_masks: masks must be float32, got ",
              masks_in.scalar_type());
  TORCH_CHECK(masks_in.dim() == 3, "yolact_d2::paste_masks: masks must have shape (N, Hp, Wp), got ",
              masks_in.sizes());
  TORCH_CHECK(height > 0 && width > 0, "yolact_d2::paste_masks: output size must be positive, got ", height,
              "x", width);
  TORCH_CHECK(threshold >= 0.0, "yolact_d2::paste_masks: threshold must be >= 0 (outside a window the "
              "upsampled value is 0), got ", threshold);
  const at::Tensor masks = masks_in.contiguous();
  const int64_t n = masks.size(0), hp = masks.size(1), wp = masks.size(2);
  auto out = at::empty({n, height, width}, masks.options().dtype(at::kBool));
  if (n == 0) return out;
  TORCH_CHECK(hp > 0 && wp > 0, "yolact_d2::paste_masks: masks must not be empty, got ", masks.sizes());
  const float thr = static_cast<float>(threshold);
  const float* in = masks.data_ptr<float>();
  bool* o = out.data_ptr<bool>();
  if (hp == height && wp == width) {  // PyTorch copies at the same size (a NaN neighbour stays out)
    at::parallel_for(0, n * hp * wp, 1 << 16, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) o[k] = in[k] > thr;
    });
    return out;
  }
  const Taps ty = bilinear_taps(hp, height), tx = bilinear_taps(wp, width);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      bool* plane = o + i * height * width;
      std::memset(plane, 0, height * width * sizeof(bool));
      paste_one(in + i * hp * wp, hp, wp, ty, tx, thr, plane, width);
    }
  });
  return out;
}

}  // namespace yolact_d2
