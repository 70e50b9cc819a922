// Shared scalar math of the Fast NMS and crop kernels (CPU and CUDA), written to reproduce the
// pure-PyTorch path in yolact_d2/layers/ops.py bit for bit: same operations in the same order,
// no fused multiply-add (setup.py builds with -ffp-contract=off / --fmad=false).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define YD2_HD __host__ __device__ __forceinline__
#else
#define YD2_HD inline
#endif

namespace yolact_d2 {

template <typename T>
YD2_HD T min2(T a, T b) { return b < a ? b : a; }
template <typename T>
YD2_HD T max2(T a, T b) { return a < b ? b : a; }

// (x2 - x1) * (y2 - y1) as given: inverted boxes get a negative or zero area.
template <typename T>
YD2_HD T box_area(const T* b) { return (b[2] - b[0]) * (b[3] - b[1]); }

// IoU with the module's rule: 0 unless the clamped intersection is positive (then both areas are
// >= the intersection and the union is positive), so inverted / zero-area boxes never overlap.
template <typename T>
YD2_HD T box_iou(const T* a, T area_a, const T* b, T area_b) {
  const T w = max2(min2(a[2], b[2]) - max2(a[0], b[0]), T(0));
  const T h = max2(min2(a[3], b[3]) - max2(a[1], b[1]), T(0));
  const T inter = w * h;
  if (!(inter > T(0))) return T(0);
  return inter / ((area_a + area_b) - inter);
}

// Strict order of (score, index) used by every sort: higher score first, NaN before everything
// (as torch.sort(descending=True)), equal scores by lower index.
template <typename T>
YD2_HD bool ranks_before(T sa, int64_t ia, T sb, int64_t ib) {
  const bool na = sa != sa, nb = sb != sb;
  if (na || nb) return na && nb ? ia < ib : na;
  if (sa != sb) return sa > sb;
  return ia < ib;
}

// Half-open integer range [lo, hi) of pixel indices c (0..size-1) with x1 <= c < x2, where
// x1 = max(min(a, b) * size - padding, 0) and x2 = min(max(a, b) * size + padding, size):
// the official YOLACT crop extent for normalised box coordinates a, b. NaN gives an empty range.
template <typename T>
YD2_HD void crop_range(T a, T b, int64_t size, int64_t padding, int64_t* lo, int64_t* hi) {
  const T s = static_cast<T>(size);
  const T x1 = max2(min2(a, b) * s - static_cast<T>(padding), T(0));
  const T x2 = min2(max2(a, b) * s + static_cast<T>(padding), s);
  if (x1 != x1 || x2 != x2) {
    *lo = 0;
    *hi = 0;
    return;
  }
  // integer c >= x1  <=>  c >= ceil(x1);  integer c < x2  <=>  c < ceil(x2)
  const T l = min2(max2(static_cast<T>(ceil(x1)), T(0)), s);
  const T h = min2(max2(static_cast<T>(ceil(x2)), T(0)), s);
  *lo = static_cast<int64_t>(l);
  *hi = static_cast<int64_t>(h) < *lo ? *lo : static_cast<int64_t>(h);
}

}  // namespace yolact_d2
