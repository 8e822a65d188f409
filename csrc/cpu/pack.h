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
#include <new>

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

// 1 / ||row|| (1e12 for a row of norm below 1e-12, so an all-zero row stays zero), as
// patchvq.reference's normalize; acc_t accumulates.
template <typename acc_t, typename in_t>
acc_t inverse_norm(const StridedRows<in_t>& m, int64_t i) {
  acc_t sum = 0;
  for (int64_t j = 0; j < m.cols; ++j) {
    acc_t v = static_cast<acc_t>(m.at(i, j));
    sum += v * v;
  }
  return acc_t(1) / std::max(std::sqrt(sum), acc_t(1e-12));
}

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
  bool fill(const StridedRows<in_t>& codebook, int64_t first, int64_t count, Metric metric) {
    std::atomic<bool> finite{true};
    first_ = first;
    panels_ = (count + NR - 1) / NR;
    // Threads only for packs of over a few MiB: a parallel region costs more below that.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / (NR * std::max<int64_t>(d_, 1)));
    at::parallel_for(0, panels_, grain, [&](int64_t p_begin, int64_t p_end) {
      bool local = true;
      for (int64_t p = p_begin; p < p_end; ++p)
        for (int lane = 0; lane < NR; ++lane) local &= fill_lane(codebook, p, lane, count, metric);
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
  bool fill_lane(const StridedRows<in_t>& codebook, int64_t p, int lane, int64_t count, Metric metric) {
    acc_t* panel = values_.get() + p * NR * d_;
    const int64_t slot = p * NR + lane;
    if (slot >= count) {
      for (int64_t j = 0; j < d_; ++j) panel[j * NR + lane] = 0;
      norms_.get()[slot] = std::numeric_limits<acc_t>::infinity();
      return true;
    }
    const int64_t c = first_ + slot;
    const acc_t scale = metric == Metric::Cosine ? inverse_norm<acc_t>(codebook, c) : acc_t(1);
    bool finite = true;
    acc_t norm = 0;
    for (int64_t j = 0; j < d_; ++j) {
      acc_t v = static_cast<acc_t>(codebook.at(c, j));
      finite &= (v - v) == 0;
      v *= scale;
      panel[j * NR + lane] = v;
      norm += v * v;
    }
    // A zero code has cosine distance 1 like an orthogonal one: rank every code by 1 - 2 x.e.
    norms_.get()[slot] = metric == Metric::Cosine ? acc_t(1) : norm;
    return finite;
  }
};

// Rows first .. first+m-1 of x into out as [D][MR] (rows past m are zero), unit vectors for
// cosine. Returns false when a value is NaN or Inf.
template <int MR, typename acc_t, typename in_t>
bool pack_rows(const StridedRows<in_t>& x, int64_t first, int m, Metric metric, acc_t* out) {
  bool finite = true;
  const int64_t d = x.cols;
  for (int r = 0; r < MR; ++r) {
    if (r >= m) {
      for (int64_t j = 0; j < d; ++j) out[j * MR + r] = 0;
      continue;
    }
    acc_t scale = metric == Metric::Cosine ? inverse_norm<acc_t>(x, first + r) : acc_t(1);
    const in_t* row = x.row(first + r);
    for (int64_t j = 0; j < d; ++j) {
      acc_t v = static_cast<acc_t>(row[j * x.col_stride]);
      finite &= (v - v) == 0;
      out[j * MR + r] = v * scale;
    }
  }
  return finite;
}

}  // namespace patchvq::cpu
