// CPU kernels of patchvq::topk_code (top-k codes, Gumbel-max sampling with in-kernel Philox
// noise), patchvq::code_logsumexp (online log-sum-exp over the codes) and patchvq::code_prob_sum
// (per-group sums of the softmax over the codes): logits a tile at a time (code_tiles.h), folded
// into per-row state or, for code_prob_sum, a tile's K logits per row; never an N x K buffer.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "argument_checks.h"
#include "code_tiles.h"
#include "fast_math.h"
#include "philox.h"

namespace patchvq::cpu {
namespace {

template <typename acc_t>
StridedRows<acc_t> rows_of(const at::Tensor& t) {
  return {t.data_ptr<acc_t>(), t.size(0), t.size(1), t.stride(0), t.stride(1)};
}

// Per row the k best (score, code) so far, best first; a later code enters only with a strictly
// larger score, so ties keep the smallest code. With temperature > 0 the score is
// logit / temperature + Gumbel noise, the noise drawn only for blocks that could still enter.
template <typename acc_t>
class TopkVisitor {
 public:
  static constexpr int MR = TileShape<acc_t>::MR, NC = TileShape<acc_t>::NC;

  TopkVisitor(int64_t k, double temperature, uint64_t seed, uint64_t offset, int64_t* index)
      : k_(k), inverse_t_(temperature > 0 ? acc_t(1) / static_cast<acc_t>(temperature) : acc_t(1)),
        noisy_(temperature > 0), seed_(seed), offset_(offset), index_(index), value_(MR * k), code_(MR * k) {}

  void start(int64_t first, int m) {
    first_ = first;
    m_ = m;
    std::fill(value_.begin(), value_.end(), -std::numeric_limits<acc_t>::infinity());
    std::fill(code_.begin(), code_.end(), int64_t{-1});
  }

  void block(acc_t* tile, int64_t first_code, int count) {
    for (int r = 0; r < m_; ++r) {
      acc_t* score = tile + r * NC;
      acc_t* value = value_.data() + r * k_;
      int64_t* code = code_.data() + r * k_;
      if (noisy_ && !add_noise(score, first_code, first_ + r, value[k_ - 1])) continue;
      for (int c = 0; c < count; ++c)
        if (score[c] > value[k_ - 1]) insert(value, code, score[c], first_code + c);
    }
  }

  void finish() {
    for (int r = 0; r < m_; ++r) std::copy_n(code_.data() + r * k_, k_, index_ + (first_ + r) * k_);
  }

 private:
  // score[c] = score[c] / T + noise(row, first_code + c); false (score left as is) when no code
  // of the block can beat `threshold` whatever its noise.
  bool add_noise(acc_t* score, int64_t first_code, int64_t row, acc_t threshold) {
    acc_t best = -std::numeric_limits<acc_t>::infinity();
    for (int c = 0; c < NC; ++c) best = std::max(best, score[c] * inverse_t_);
    if (best + static_cast<acc_t>(kGumbelMax) < threshold) return false;
    uint32_t bits[NC];
    const int64_t first_quad = first_code / 4;  // NC is a multiple of 4: blocks start on a quad
#pragma omp simd
    for (int q = 0; q < NC / 4; ++q) {
      uint32_t c[4];
      noise_counter(c, first_quad + q, row, offset_);
      philox4x32_10(c, static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32));
      for (int w = 0; w < 4; ++w) bits[4 * q + w] = c[w];
    }
#pragma omp simd
    for (int c = 0; c < NC; ++c) {
      const acc_t u = static_cast<acc_t>(uniform_of(bits[c]));
      score[c] = score[c] * inverse_t_ - fast_log(-fast_log(u));
    }
    return true;
  }

  void insert(acc_t* value, int64_t* code, acc_t s, int64_t c) {
    int64_t slot = k_ - 1;
    while (slot > 0 && value[slot - 1] < s) {
      value[slot] = value[slot - 1];
      code[slot] = code[slot - 1];
      --slot;
    }
    value[slot] = s;
    code[slot] = c;
  }

  int64_t k_;
  acc_t inverse_t_;
  bool noisy_;
  uint64_t seed_, offset_;
  int64_t* index_;
  int64_t first_ = 0;
  int m_ = 0;
  std::vector<acc_t> value_;
  std::vector<int64_t> code_;
};

// Per row the running maximum of scale * logit and the sum of exp(scale * logit - maximum).
template <typename acc_t>
class LogsumexpVisitor {
 public:
  static constexpr int MR = TileShape<acc_t>::MR, NC = TileShape<acc_t>::NC;

  LogsumexpVisitor(acc_t scale, acc_t* out) : scale_(scale), out_(out) {}

  void start(int64_t first, int m) {
    first_ = first;
    m_ = m;
    std::fill(max_, max_ + MR, -std::numeric_limits<acc_t>::infinity());
    std::fill(sum_, sum_ + MR, acc_t(0));
  }

  void block(acc_t* tile, int64_t, int count) {
    for (int r = 0; r < m_; ++r) {
      acc_t* v = tile + r * NC;
      acc_t top = -std::numeric_limits<acc_t>::infinity();
      for (int c = 0; c < count; ++c) {
        v[c] *= scale_;
        top = std::max(top, v[c]);
      }
      if (top > max_[r]) {
        sum_[r] *= fast_exp(max_[r] - top);
        max_[r] = top;
      }
      const acc_t m = max_[r];
      acc_t total = 0;
#pragma omp simd reduction(+ : total)
      for (int c = 0; c < count; ++c) total += fast_exp(v[c] - m);
      sum_[r] += total;
    }
  }

  void finish() {
    for (int r = 0; r < m_; ++r) out_[first_ + r] = max_[r] + std::log(sum_[r]);
  }

 private:
  acc_t scale_;
  acc_t* out_;
  int64_t first_ = 0;
  int m_ = 0;
  acc_t max_[MR], sum_[MR];
};

// Adds each row's softmax over the codes into one output row [K]: the visitor of a single group,
// whose rows are visited in order by one thread. The tile's scaled logits for all K codes are kept
// ([MR][K] per thread), so the softmax needs one pass over the codes, not a log-sum-exp pass first.
template <typename acc_t>
class ProbSumVisitor {
 public:
  static constexpr int MR = TileShape<acc_t>::MR, NC = TileShape<acc_t>::NC;

  ProbSumVisitor(acc_t scale, int64_t k, acc_t* sum) : scale_(scale), k_(k), sum_(sum), logits_(MR * k) {}

  void start(int64_t, int m) { m_ = m; }

  void block(acc_t* tile, int64_t first_code, int count) {
    for (int r = 0; r < m_; ++r)
      for (int c = 0; c < count; ++c) logits_[r * k_ + first_code + c] = scale_ * tile[r * NC + c];
  }

  void finish() {
    for (int r = 0; r < m_; ++r) {
      acc_t* v = logits_.data() + r * k_;
      const acc_t top = *std::max_element(v, v + k_);
      acc_t total = 0;
#pragma omp simd reduction(+ : total)
      for (int64_t c = 0; c < k_; ++c) {
        v[c] = fast_exp(v[c] - top);
        total += v[c];
      }
      const acc_t inverse = acc_t(1) / total;
#pragma omp simd
      for (int64_t c = 0; c < k_; ++c) sum_[c] += v[c] * inverse;
    }
  }

 private:
  acc_t scale_;
  int64_t k_;
  acc_t* sum_;
  int m_ = 0;
  std::vector<acc_t> logits_;
};

at::Tensor topk_code_cpu(const at::Tensor& x, const at::Tensor& codebook, int64_t k, c10::string_view metric,
                         double temperature, int64_t seed, int64_t offset) {
  const Logit logit = check_logit_arguments(x, codebook, metric) ? Logit::Dot : Logit::L2;
  check_topk_arguments(codebook, k, temperature, seed, offset);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xs = x.to(acc), cb = codebook.to(acc);
  at::Tensor index = at::empty({x.size(0), k}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(acc, "patchvq::topk_code", [&] {
    const TiledCodes<scalar_t> codes(rows_of<scalar_t>(cb));
    int64_t* out = index.data_ptr<int64_t>();
    for_each_logit_tile(rows_of<scalar_t>(xs), codes, logit, [&] {
      return TopkVisitor<scalar_t>(k, temperature, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), out);
    });
  });
  return index;
}

at::Tensor code_logsumexp_cpu(const at::Tensor& x, const at::Tensor& codebook, c10::string_view metric,
                              double scale) {
  const Logit logit = check_logit_arguments(x, codebook, metric) ? Logit::Dot : Logit::L2;
  check_scale(scale);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xs = x.to(acc), cb = codebook.to(acc);
  at::Tensor lse = at::empty({x.size(0)}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "patchvq::code_logsumexp", [&] {
    const TiledCodes<scalar_t> codes(rows_of<scalar_t>(cb));
    scalar_t* out = lse.data_ptr<scalar_t>();
    for_each_logit_tile(rows_of<scalar_t>(xs), codes, logit,
                        [&] { return LogsumexpVisitor<scalar_t>(static_cast<scalar_t>(scale), out); });
  });
  return lse;
}

at::Tensor code_prob_sum_cpu(const at::Tensor& x, const at::Tensor& codebook, int64_t group, c10::string_view metric,
                             double scale) {
  const Logit logit = check_logit_arguments(x, codebook, metric) ? Logit::Dot : Logit::L2;
  check_scale(scale);
  TORCH_CHECK_VALUE(group >= 1, "patchvq: group must be an int >= 1, got ", group);
  TORCH_CHECK_VALUE(x.size(0) % group == 0, "patchvq: group=", group, " does not divide the N=", x.size(0),
                    " rows of x");
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xs = x.to(acc), cb = codebook.to(acc);
  const int64_t groups = x.size(0) / group, k = codebook.size(0);
  at::Tensor sum = at::zeros({groups, k}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "patchvq::code_prob_sum", [&] {
    const TiledCodes<scalar_t> codes(rows_of<scalar_t>(cb));
    const auto s = static_cast<scalar_t>(scale);
    // Threads split the groups and each group's tiles run in order on one thread: a group's
    // output row has one writer and its sum a fixed order.
    const StridedRows<scalar_t> rows = rows_of<scalar_t>(xs);
    scalar_t* out = sum.data_ptr<scalar_t>();
    constexpr int MR = TileShape<scalar_t>::MR;
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        const StridedRows<scalar_t> members{rows.data + g * group * rows.row_stride, group, rows.cols,
                                            rows.row_stride, rows.col_stride};
        ProbSumVisitor<scalar_t> visitor(s, k, out + g * k);
        visit_logit_tiles(members, codes, logit, visitor, 0, (group + MR - 1) / MR);
      }
    });
  });
  return sum;
}

}  // namespace
}  // namespace patchvq::cpu

TORCH_LIBRARY_IMPL(patchvq_native, CPU, m) {
  m.impl("topk_code", &patchvq::cpu::topk_code_cpu);
  m.impl("code_logsumexp", &patchvq::cpu::code_logsumexp_cpu);
  m.impl("code_prob_sum", &patchvq::cpu::code_prob_sum_cpu);
}
