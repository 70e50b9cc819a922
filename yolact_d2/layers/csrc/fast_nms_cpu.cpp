// YOLACT Fast NMS, CPU kernel. Per class (in parallel over classes): buffered top-k of the class'
// scores, then each candidate j is kept iff no higher-ranked candidate i < j has IoU > threshold
// (the upper-triangle column max of the official implementation, with an early exit), then a
// partial sort of all kept (class, box) pairs. Results equal fast_nms_pytorch exactly.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "box_math.h"
#include "ops.h"

namespace yolact_d2 {
namespace {

template <typename S>
struct Candidate {
  S score;
  int64_t index;  // prior index into N
};

// The k best (score, index) of row[0..n) by ranks_before, best first. Scores not below the k-th
// best seen so far go to a buffer of 2k; a full buffer is cut back to its k best (nth_element),
// which raises the bar. Most scores are rejected by a vectorised block test against the bar.
template <typename scalar_t, typename S>
void top_k_sorted(const scalar_t* row, int64_t n, int64_t k, std::vector<Candidate<S>>& out) {
  out.clear();
  if (k <= 0) return;
  auto before = [](const Candidate<S>& a, const Candidate<S>& b) {
    return ranks_before(a.score, a.index, b.score, b.index);
  };
  const size_t cap = static_cast<size_t>(2 * k);
  out.reserve(cap);
  bool have_bar = false;
  S bar = S(0);  // the k-th best score so far: a later (higher-index) score below or equal loses
  constexpr int64_t kBlock = 64;
  for (int64_t i = 0; i < n;) {
    const int64_t e = std::min(n, i + kBlock);
    if (have_bar) {
      int any = 0;  // NaN is never "below the bar", so it is always looked at
      for (int64_t t = i; t < e; ++t) any |= static_cast<int>(!(static_cast<S>(row[t]) < bar));
      if (!any) {
        i = e;
        continue;
      }
    }
    for (; i < e; ++i) {
      const S s = static_cast<S>(row[i]);
      if (have_bar && s < bar) continue;
      out.push_back({s, i});
      if (out.size() == cap) {
        std::nth_element(out.begin(), out.begin() + (k - 1), out.end(), before);
        out.resize(k);
        bar = out[k - 1].score;
        have_bar = true;
      }
    }
  }
  const size_t m = std::min(out.size(), static_cast<size_t>(k));
  std::partial_sort(out.begin(), out.begin() + m, out.end(), before);
  out.resize(m);
}

// Candidate boxes of one class in rank order, one array per coordinate so the IoU loop vectorises.
template <typename B>
struct CandidateBoxes {
  std::vector<B> x1, y1, x2, y2, area;

  template <typename S>
  void gather(const B* boxes, const std::vector<Candidate<S>>& cand) {
    const size_t k = cand.size();
    x1.resize(k), y1.resize(k), x2.resize(k), y2.resize(k), area.resize(k);
    for (size_t j = 0; j < k; ++j) {
      const B* b = boxes + 4 * cand[j].index;
      x1[j] = b[0], y1[j] = b[1], x2[j] = b[2], y2[j] = b[3];
      area[j] = box_area(b);
    }
  }
};

// keep[j] = no candidate i < j has IoU(i, j) > thr (the column max of the upper triangle), tested
// a chunk of i at a time: the chunk's IoUs vectorise (same operations as box_iou, so the same
// bits), and the scan stops at the first chunk with a suppressor.
template <typename B>
void suppress(const CandidateBoxes<B>& c, B thr, std::vector<char>& keep) {
  constexpr int64_t kChunk = 16;
  const int64_t k = static_cast<int64_t>(c.area.size());
  keep.assign(k, 1);
  const B *x1 = c.x1.data(), *y1 = c.y1.data(), *x2 = c.x2.data(), *y2 = c.y2.data(), *area = c.area.data();
  for (int64_t j = 1; j < k; ++j) {
    const B bx1 = x1[j], by1 = y1[j], bx2 = x2[j], by2 = y2[j], barea = area[j];
    bool suppressed = false;
    for (int64_t i0 = 0; i0 < j && !suppressed; i0 += kChunk) {
      const int64_t i1 = std::min(j, i0 + kChunk);
      int hit = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const B w = max2(min2(x2[i], bx2) - max2(x1[i], bx1), B(0));
        const B h = max2(min2(y2[i], by2) - max2(y1[i], by1), B(0));
        const B inter = w * h;
        const B iou = inter / ((area[i] + barea) - inter);  // used only where inter > 0
        hit |= static_cast<int>(inter > B(0)) & static_cast<int>(iou > thr);
      }
      suppressed = hit != 0;
    }
    keep[j] = !suppressed;  // Fast NMS: suppressed by any higher-ranked box, kept or not
  }
}

template <typename scalar_t, typename B>
NmsResult fast_nms_per_class(const at::Tensor& boxes, const at::Tensor& scores, B thr, int64_t top_k,
                             int64_t max_detections) {
  using S = at::opmath_type<scalar_t>;
  const int64_t C = scores.size(0), N = scores.size(1);
  const int64_t k = std::min(top_k, N);
  const scalar_t* sp = scores.data_ptr<scalar_t>();
  const B* bp = boxes.data_ptr<B>();

  struct Kept {
    S score;
    int64_t rank;  // class * k + rank within class: the pure path's tie order
    int64_t index;
  };
  std::vector<std::vector<Kept>> kept(C);
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    std::vector<Candidate<S>> cand;
    CandidateBoxes<B> cb;
    std::vector<char> keep;
    for (int64_t c = begin; c < end; ++c) {
      top_k_sorted<scalar_t, S>(sp + c * N, N, k, cand);
      cb.gather(bp, cand);
      suppress(cb, thr, keep);
      auto& out = kept[c];
      for (int64_t j = 0; j < k; ++j)
        if (keep[j]) out.push_back({cand[j].score, c * k + j, cand[j].index});
    }
  });

  std::vector<Kept> all;
  for (auto& v : kept) all.insert(all.end(), v.begin(), v.end());
  const int64_t d = std::min<int64_t>(max_detections, static_cast<int64_t>(all.size()));
  std::partial_sort(all.begin(), all.begin() + d, all.end(), [](const Kept& a, const Kept& b) {
    return ranks_before(a.score, a.rank, b.score, b.rank);
  });

  auto keep_t = at::empty({d}, boxes.options().dtype(at::kLong));
  auto cls_t = at::empty({d}, boxes.options().dtype(at::kLong));
  auto score_t = at::empty({d}, scores.options());
  int64_t* kp = keep_t.data_ptr<int64_t>();
  int64_t* cp = cls_t.data_ptr<int64_t>();
  scalar_t* op = score_t.data_ptr<scalar_t>();
  for (int64_t i = 0; i < d; ++i) {
    kp[i] = all[i].index;
    cp[i] = all[i].rank / k;
    op[i] = static_cast<scalar_t>(all[i].score);
  }
  return {keep_t, cls_t, score_t};
}

template <typename scalar_t, typename B>
NmsResult fast_nms_class_agnostic(const at::Tensor& boxes, const at::Tensor& scores, B thr,
                                  int64_t top_k, int64_t max_detections) {
  using S = at::opmath_type<scalar_t>;
  const int64_t C = scores.size(0), N = scores.size(1);
  const scalar_t* sp = scores.data_ptr<scalar_t>();
  // best[n], best_class[n] = max / argmax over classes (first max wins, NaN propagates as torch.max)
  std::vector<S> best(N);
  std::vector<int64_t> best_class(N, 0);
  at::parallel_for(0, N, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) best[n] = static_cast<S>(sp[n]);
    for (int64_t c = 1; c < C; ++c) {
      const scalar_t* row = sp + c * N;
      for (int64_t n = begin; n < end; ++n) {
        const S v = static_cast<S>(row[n]);
        const S b = best[n];
        if (b == b && (v != v || v > b)) {
          best[n] = v;
          best_class[n] = c;
        }
      }
    }
  });
  std::vector<Candidate<S>> cand;
  top_k_sorted<S, S>(best.data(), N, std::min(top_k, N), cand);
  CandidateBoxes<B> cb;
  std::vector<char> keep;
  cb.gather(boxes.data_ptr<B>(), cand);
  const int64_t k = static_cast<int64_t>(cand.size());
  suppress(cb, thr, keep);

  std::vector<int64_t> order;
  for (int64_t j = 0; j < k && static_cast<int64_t>(order.size()) < max_detections; ++j)
    if (keep[j]) order.push_back(j);
  const int64_t d = static_cast<int64_t>(order.size());
  auto keep_t = at::empty({d}, boxes.options().dtype(at::kLong));
  auto cls_t = at::empty({d}, boxes.options().dtype(at::kLong));
  auto score_t = at::empty({d}, scores.options());
  for (int64_t i = 0; i < d; ++i) {
    const auto& cnd = cand[order[i]];
    keep_t.data_ptr<int64_t>()[i] = cnd.index;
    cls_t.data_ptr<int64_t>()[i] = best_class[cnd.index];
    score_t.data_ptr<scalar_t>()[i] = static_cast<scalar_t>(cnd.score);
  }
  return {keep_t, cls_t, score_t};
}

}  // namespace

NmsResult fast_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in, double iou_threshold,
                       int64_t top_k, int64_t max_detections, bool class_agnostic) {
  check_fast_nms_args(boxes_in, scores_in, top_k, max_detections);
  TORCH_CHECK(boxes_in.device().is_cpu(), "yolact_d2::fast_nms (CPU kernel): boxes must be on CPU");
  const int64_t C = scores_in.size(0), N = scores_in.size(1);
  if (C == 0 || N == 0 || top_k == 0 || max_detections == 0) {
    auto e = at::empty({0}, boxes_in.options().dtype(at::kLong));
    return {e, e.clone(), at::empty({0}, scores_in.options())};
  }
  // IoU precision: float64 boxes stay float64, every other float dtype is computed in float32
  const bool box_double = boxes_in.scalar_type() == at::kDouble;
  const at::Tensor boxes = (box_double ? boxes_in : boxes_in.to(at::kFloat)).contiguous();
  const at::Tensor scores = scores_in.contiguous();
  NmsResult result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "fast_nms_cpu", [&] {
    if (box_double) {
      const double thr = iou_threshold;
      result = class_agnostic
                   ? fast_nms_class_agnostic<scalar_t, double>(boxes, scores, thr, top_k, max_detections)
                   : fast_nms_per_class<scalar_t, double>(boxes, scores, thr, top_k, max_detections);
    } else {
      const float thr = static_cast<float>(iou_threshold);  // as torch compares float32 to a scalar
      result = class_agnostic
                   ? fast_nms_class_agnostic<scalar_t, float>(boxes, scores, thr, top_k, max_detections)
                   : fast_nms_per_class<scalar_t, float>(boxes, scores, thr, top_k, max_detections);
    }
  });
  return result;
}

}  // namespace yolact_d2
