// Packing for the nearest-code search: the codebook into D-major panels of NR codes with their
// squared norms, and tiles of x rows into D-major blocks of MR rows, both from strided views.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include "checks.h"

namespace patchvq::cpu {

// A [rows, cols] matrix at data with element (i, j) at data[i * row_stride + j * col_stride].
template <typename T>
struct StridedRows {
  const T* data;
  int64_t rows;
  int64_t cols;
  int64_t row_stride;
  int64_t col_stride;

  const T* row(int64_t i) const { return data + i * row_stride; }
  T at(int64_t i, int64_t j) const { return data[i * row_stride + j * col_stride]; }
};

// Uninitialised storage of n values of T on a cache-line boundary, so panels load aligned.
template <typename T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(int64_t n) : data_(allocate(n)) {}
  T* get() const { return data_.get(); }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  static T* allocate(int64_t n) {
    constexpr size_t kAlign = 64;
    size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T) + kAlign - 1) / kAlign * kAlign;
    void* p = std::aligned_alloc(kAlign, bytes);
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  std::unique_ptr<T, Free> data_;
};

// How a row is scaled to unit length: v * inverse, or for rows whose squared norm would
// overflow or underflow acc_t, ldexp(v, exponent) * inverse (the row first brought to a largest
// |v| in [0.5, 1), so every nonzero row becomes a unit vector whatever its scale). An all-zero
// row stays zero. The same function as patchvq.reference's normalize.
template <typename acc_t>
struct RowScale {
  acc_t inverse = 1;
  int exponent = 0;
  acc_t apply(acc_t v) const { return exponent == 0 ? v * inverse : std::ldexp(v, exponent) * inverse; }
};

template <typename acc_t, typename in_t>
RowScale<acc_t> unit_scale(const StridedRows<in_t>& m, int64_t i) {
  // Squared norms in this range are exact enough and far from overflow and underflow.
  constexpr int kSafeExponent = std::numeric_limits<acc_t>::max_exponent / 2 - 8;
  const acc_t lo = std::ldexp(acc_t(1), -kSafeExponent), hi = std::ldexp(acc_t(1), kSafeExponent);
  acc_t sum = 0;
  for (int64_t j = 0; j < m.cols; ++j) {
    acc_t v = static_cast<acc_t>(m.at(i, j));
    sum += v * v;
  }
  if (sum >= lo && sum <= hi) return {acc_t(1) / std::sqrt(sum), 0};
  acc_t largest = 0;
  for (int64_t j = 0; j < m.cols; ++j) largest = std::max(largest, std::abs(static_cast<acc_t>(m.at(i, j))));
  if (!(largest > 0) || !std::isfinite(largest)) return {acc_t(0), 0};  // zero row; NaN/Inf reported elsewhere
  int exponent;
  std::frexp(largest, &exponent);
  acc_t scaled = 0;
  for (int64_t j = 0; j < m.cols; ++j) {
    acc_t v = std::ldexp(static_cast<acc_t>(m.at(i, j)), -exponent);
    scaled += v * v;
  }
  return {acc_t(1) / std::sqrt(scaled), -exponent};
}

// The frame the L2 search scores in: every value v of column j enters the kernel as
// v * scale - shift[j]. scale is a power of two bringing the codebook's largest |value| into
// [0.5, 1), so squared norms and dot products cannot overflow or underflow for any finite
// codebook, and shift is the codebook's mean in those units, so scores ||e||^2 - 2 x.e are
// computed relative to the codebook's centre and a large common offset costs no precision.
// Neither changes which code is nearest (translation and uniform scaling preserve the order of
// L2 distances); the returned distances are computed from the inputs. Cosine: the identity.
template <typename acc_t>
class SearchFrame {
 public:
  template <typename in_t>
  SearchFrame(const StridedRows<in_t>& codebook, Metric metric) : shift_(std::max<int64_t>(codebook.cols, 1)) {
    const int64_t d = codebook.cols;
    std::fill(shift_.get(), shift_.get() + std::max<int64_t>(d, 1), acc_t(0));
    if (metric != Metric::L2 || codebook.rows == 0) return;
    // Column sums (double), column ranges and the largest |value|, threads over code chunks.
    constexpr double kInf = std::numeric_limits<double>::infinity();
    std::vector<double> sum(d, 0.0), low(d, kInf), high(d, -kInf);
    double largest = 0;
    std::mutex merge;
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(d, 1));
    at::parallel_for(0, codebook.rows, grain, [&](int64_t begin, int64_t end) {
      std::vector<double> local(d, 0.0), local_low(d, kInf), local_high(d, -kInf);
      double local_largest = 0;
      for (int64_t c = begin; c < end; ++c)
        for (int64_t j = 0; j < d; ++j) {
          const double v = static_cast<double>(static_cast<acc_t>(codebook.at(c, j)));
          local[j] += v;
          local_low[j] = std::min(local_low[j], v);  // NaN: ignored, reported by packing
          local_high[j] = std::max(local_high[j], v);
          local_largest = std::max(local_largest, std::abs(v));
        }
      std::lock_guard<std::mutex> lock(merge);
      for (int64_t j = 0; j < d; ++j) {
        sum[j] += local[j];
        low[j] = std::min(low[j], local_low[j]);
        high[j] = std::max(high[j], local_high[j]);
      }
      largest = std::max(largest, local_largest);
    });
    if (!std::isfinite(largest)) return;  // an Inf code: packing reports it
    int exponent = 0;
    if (largest > 0) std::frexp(largest, &exponent);
    // Keep the scale a normal acc_t (a codebook of denormals is scaled as far as that allows).
    constexpr int kMaxExponent = std::numeric_limits<acc_t>::max_exponent - 2;
    exponent = std::clamp(exponent, -kMaxExponent, kMaxExponent);
    scale_ = std::ldexp(acc_t(1), -exponent);
    exponent_ = exponent;
    // The shift is the mean rounded to a multiple of q = 2^(e - 5), e the exponent of the widest
    // column range (in scaled units): within r/32 of the mean, so the precision is the same, and
    // with few bits, so inputs of few bits (small integers) keep exact scores and exact ties.
    double range = 0;
    for (int64_t j = 0; j < d; ++j) range = std::max(range, std::ldexp(high[j] - low[j], -exponent));
    if (!(range > 0) || !std::isfinite(range)) return;  // all codes equal: no shift needed
    int range_exponent;
    std::frexp(range, &range_exponent);
    const int quantum = range_exponent - 5;
    for (int64_t j = 0; j < d; ++j) {
      const double mean = std::ldexp(sum[j] / static_cast<double>(codebook.rows), -exponent);
      shift_.get()[j] = static_cast<acc_t>(std::ldexp(std::nearbyint(std::ldexp(mean, -quantum)), quantum));
      if (!std::isfinite(shift_.get()[j])) shift_.get()[j] = 0;
    }
  }

  acc_t scale() const { return scale_; }
  // Binary exponent of the codebook's largest |value| (0 for cosine or an all-zero codebook).
  int exponent() const { return exponent_; }
  const acc_t* shift() const { return shift_.get(); }
  acc_t apply(acc_t v, int64_t j) const { return v * scale_ - shift_.get()[j]; }

 private:
  acc_t scale_ = 1;
  int exponent_ = 0;
  AlignedBuffer<acc_t> shift_;
};

// Up to `capacity` codes as panels of NR codes; panel p holds codes
// first + p*NR .. first + p*NR + NR-1 as [D][NR], with norms[c] = ||code||^2 alongside. Lanes past
// the block's last code are zero with norm +inf, so they never win. Cosine packs unit vectors.
template <typename acc_t, int NR>
class PackedCodes {
 public:
  PackedCodes(int64_t capacity, int64_t d)
      : d_(d), capacity_panels_((capacity + NR - 1) / NR), values_(capacity_panels_ * NR * d),
        norms_(capacity_panels_ * NR) {}

  // Packs codebook rows first .. first+count-1 (count <= capacity); returns false when one of
  // their values is NaN or Inf.
  template <typename in_t>
  bool fill(const StridedRows<in_t>& codebook, int64_t first, int64_t count, Metric metric,
            const SearchFrame<acc_t>& frame) {
    std::atomic<bool> finite{true};
    first_ = first;
    panels_ = (count + NR - 1) / NR;
    // Threads only for packs of over a few MiB: a parallel region costs more below that.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / (NR * std::max<int64_t>(d_, 1)));
    at::parallel_for(0, panels_, grain, [&](int64_t p_begin, int64_t p_end) {
      bool local = true;
      for (int64_t p = p_begin; p < p_end; ++p)
        for (int lane = 0; lane < NR; ++lane) local &= fill_lane(codebook, p, lane, count, metric, frame);
      if (!local) finite.store(false, std::memory_order_relaxed);
    });
    return finite.load();
  }

  int64_t first() const { return first_; }
  int64_t panels() const { return panels_; }
  int64_t dim() const { return d_; }
  const acc_t* panel(int64_t p) const { return values_.get() + p * NR * d_; }
  const acc_t* norms(int64_t p) const { return norms_.get() + p * NR; }

 private:
  int64_t d_, capacity_panels_;
  int64_t first_ = 0, panels_ = 0;
  AlignedBuffer<acc_t> values_;
  AlignedBuffer<acc_t> norms_;

  // Lane `lane` of panel p: code first_ + p*NR + lane, or padding past count. False on NaN/Inf.
  template <typename in_t>
  bool fill_lane(const StridedRows<in_t>& codebook, int64_t p, int lane, int64_t count, Metric metric,
                 const SearchFrame<acc_t>& frame) {
    acc_t* panel = values_.get() + p * NR * d_;
    const int64_t slot = p * NR + lane;
    if (slot >= count) {
      for (int64_t j = 0; j < d_; ++j) panel[j * NR + lane] = 0;
      norms_.get()[slot] = std::numeric_limits<acc_t>::infinity();
      return true;
    }
    const int64_t c = first_ + slot;
    const bool cosine = metric == Metric::Cosine;
    const RowScale<acc_t> unit = cosine ? unit_scale<acc_t>(codebook, c) : RowScale<acc_t>{};
    bool finite = true;
    acc_t norm = 0;
    for (int64_t j = 0; j < d_; ++j) {
      acc_t v = static_cast<acc_t>(codebook.at(c, j));
      finite &= (v - v) == 0;
      v = cosine ? unit.apply(v) : frame.apply(v, j);
      panel[j * NR + lane] = v;
      norm += v * v;
    }
    // A zero code has cosine distance 1 like an orthogonal one: rank every code by 1 - 2 x.e.
    norms_.get()[slot] = metric == Metric::Cosine ? acc_t(1) : norm;
    return finite;
  }
};

// Rows first .. first+m-1 of x into out as [D][MR] (rows past m are zero), in the codebook's
// search frame for L2, unit vectors for cosine. Returns false when a value is NaN or Inf.
template <int MR, typename acc_t, typename in_t>
bool pack_rows(const StridedRows<in_t>& x, int64_t first, int m, Metric metric, const SearchFrame<acc_t>& frame,
               acc_t* out) {
  bool finite = true;
  const int64_t d = x.cols;
  for (int r = 0; r < MR; ++r) {
    if (r >= m) {
      for (int64_t j = 0; j < d; ++j) out[j * MR + r] = 0;
      continue;
    }
    const in_t* row = x.row(first + r);
    if (metric == Metric::Cosine) {
      const RowScale<acc_t> unit = unit_scale<acc_t>(x, first + r);
      for (int64_t j = 0; j < d; ++j) {
        acc_t v = static_cast<acc_t>(row[j * x.col_stride]);
        finite &= (v - v) == 0;
        out[j * MR + r] = unit.apply(v);
      }
      continue;
    }
    const acc_t scale = frame.scale();
    const acc_t* shift = frame.shift();
    for (int64_t j = 0; j < d; ++j) {
      acc_t v = static_cast<acc_t>(row[j * x.col_stride]);
      finite &= (v - v) == 0;
      out[j * MR + r] = v * scale - shift[j];
    }
  }
  return finite;
}

}  // namespace patchvq::cpu
