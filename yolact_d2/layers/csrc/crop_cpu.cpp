// YOLACT mask crop, CPU kernel: each output row is written once, as zeros outside the mask's
// [x_lo, x_hi) column band and a copy of the input inside it (rows outside [y_lo, y_hi) are all
// zeros). Results equal crop_masks_pytorch exactly.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "box_math.h"
#include "ops.h"

namespace yolact_d2 {
namespace {

struct Band {
  int64_t x_lo, x_hi, y_lo, y_hi;
};

template <typename B>
std::vector<Band> crop_bands(const at::Tensor& boxes, int64_t H, int64_t W, int64_t padding) {
  const int64_t n = boxes.size(0);
  const B* b = boxes.data_ptr<B>();
  std::vector<Band> bands(n);
  for (int64_t i = 0; i < n; ++i) {
    const B* bi = b + 4 * i;
    crop_range<B>(bi[0], bi[2], W, padding, &bands[i].x_lo, &bands[i].x_hi);
    crop_range<B>(bi[1], bi[3], H, padding, &bands[i].y_lo, &bands[i].y_hi);
  }
  return bands;
}

// A large output is fresh memory written once, so first-touch page faults (the kernel zeroing
// 4 KiB pages) cost several times the copy itself. Ask Linux for transparent huge pages (a hint;
// errors ignored). Only for >= 32 MiB: glibc serves those with their own mmap, so the advice
// never touches memory shared with other allocations. YOLACT_D2_NO_HUGEPAGES=1 turns it off.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool disabled = [] {
    const char* env = std::getenv("YOLACT_D2_NO_HUGEPAGES");
    return env != nullptr && env[0] == '1';
  }();
  if (disabled || bytes < (size_t{32} << 20)) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(page - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

template <typename scalar_t>
void crop_rows(const scalar_t* in, scalar_t* out, const std::vector<Band>& bands, int64_t H, int64_t W) {
  const int64_t rows = static_cast<int64_t>(bands.size()) * H;
  // grain: about 64 KiB of output per task
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(1, W * sizeof(scalar_t)));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const Band& bd = bands[r / H];
      const int64_t y = r % H;
      scalar_t* o = out + r * W;
      if (y < bd.y_lo || y >= bd.y_hi || bd.x_lo >= bd.x_hi) {
        std::memset(o, 0, W * sizeof(scalar_t));  // all-zero bits = +0.0 for every float type
        continue;
      }
      std::memset(o, 0, bd.x_lo * sizeof(scalar_t));
      std::memcpy(o + bd.x_lo, in + r * W + bd.x_lo, (bd.x_hi - bd.x_lo) * sizeof(scalar_t));
      std::memset(o + bd.x_hi, 0, (W - bd.x_hi) * sizeof(scalar_t));
    }
  });
}

}  // namespace

at::Tensor crop_masks_cpu(const at::Tensor& masks_in, const at::Tensor& boxes_in, int64_t padding) {
  check_crop_args(masks_in, boxes_in, padding);
  TORCH_CHECK(masks_in.device().is_cpu(), "yolact_d2::crop_masks (CPU kernel): masks must be on CPU");
  const at::Tensor masks = masks_in.contiguous();
  auto out = at::empty(masks.sizes(), masks.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t H = masks.size(1), W = masks.size(2);
  if (masks.numel() == 0) return out;
  // crop coordinates: float64 boxes stay float64, every other float dtype is computed in float32
  const bool box_double = boxes_in.scalar_type() == at::kDouble;
  const at::Tensor boxes = (box_double ? boxes_in : boxes_in.to(at::kFloat)).contiguous();
  const std::vector<Band> bands =
      box_double ? crop_bands<double>(boxes, H, W, padding) : crop_bands<float>(boxes, H, W, padding);
  advise_huge_pages(out.data_ptr(), out.nbytes());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "crop_masks_cpu", [&] {
    crop_rows<scalar_t>(masks.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), bands, H, W);
  });
  return out;
}

}  // namespace yolact_d2
