"""The codebook shared by VectorQuantize and PatchVQ: search, EMA updates, k-means init, revival, usage."""

import math
import warnings

import torch
import torch.nn.functional as F

from patchvq.layers import distributed, kmeans
from patchvq.ops import code_stats, nearest_code

METRICS = ("l2", "cosine")


class Codebook(torch.nn.Module):
    """A shared codebook of num_codes vectors of size dim: nearest-code search, EMA updates with Laplace smoothing,
    k-means++ initialisation on the first training batch, dead-code revival, usage statistics, distributed sync.

    State (all in the state_dict): `weight` [K, D] (an nn.Parameter when `learnable`, else a buffer),
    `ema_count` [K] and `ema_sum` [K, D] (exponential moving averages of the per-code counts and
    sums of the rows assigned to each code, decay `decay`), `initialised` (bool) and `revived`
    (int64, codes revived so far). With `learnable=False` the codes follow the EMA:
    weight = ema_sum / smoothed count, where the smoothed count is the Laplace-smoothed
    (ema_count + eps) / (sum + K eps) * sum. With `learnable=True` the codes are trained by
    gradient and the EMA of counts is kept for usage statistics and revival. `ema_codes=False`
    (default: not learnable) keeps a non-learnable codebook fixed except for revival.

    k-means init (`kmeans_init=True`): the first `maybe_init` call runs k-means++ seeding and
    `kmeans_iters` Lloyd steps on a bounded sample of the valid rows (never an N x K matrix),
    eagerly: it is not traced by torch.compile (a graph break, so with fullgraph=True run one
    training step, or call `maybe_init`, before compiling). Afterwards it is a no-op decided by
    a Python flag, so compiled code never reads the `initialised` buffer.

    Dead-code revival (`threshold_ema_dead_code > 0`): after each EMA update, every code whose
    EMA count is below the threshold is replaced by a distinct valid row of the current batch
    (as many as there are such rows; the rest wait for later steps), its EMA count reset to the
    threshold. Branch-free tensor code: it compiles and never syncs the host.

    Distributed (`sync=True`, or `sync=None` with torch.distributed initialised): counts and
    sums are all-reduced before the EMA, k-means runs on rank 0 over a sample gathered from all
    ranks and is broadcast, and revival rows come from all ranks through one all-reduce, so
    every rank holds the same codebook. Every rank makes the same collective calls whatever its
    data (an all-masked batch included).
    """

    weight: torch.Tensor

    def __init__(self, num_codes: int, dim: int, *, decay: float = 0.8, eps: float = 1e-5, kmeans_init: bool = False,
                 kmeans_iters: int = 10, threshold_ema_dead_code: float = 0.0, metric: str = "l2",
                 learnable: bool = False, sync: bool | None = None, ema_codes: bool | None = None,
                 kmeans_sample_size: int | None = None):
        super().__init__()
        _check_arguments(num_codes, dim, decay, eps, kmeans_iters, threshold_ema_dead_code, metric)
        self.num_codes, self.dim = num_codes, dim
        self.decay, self.eps = float(decay), float(eps)
        self.kmeans_iters = kmeans_iters
        self.kmeans_sample_size = kmeans_sample_size or kmeans.default_sample_size(num_codes)
        self.threshold_ema_dead_code = float(threshold_ema_dead_code)
        self.metric = metric
        self.learnable = learnable
        self.ema_codes = (not learnable) if ema_codes is None else bool(ema_codes)
        self.sync = sync
        if kmeans_init:
            codes = torch.zeros(num_codes, dim)
        else:
            codes = torch.nn.init.kaiming_uniform_(torch.empty(num_codes, dim))
            codes = self._in_metric_space(codes)
        if learnable:
            self.weight = torch.nn.Parameter(codes)
        else:
            self.register_buffer("weight", codes)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", codes.clone())
        self.register_buffer("initialised", torch.tensor(not kmeans_init))
        self.register_buffer("revived", torch.zeros((), dtype=torch.int64))
        self._needs_init = kmeans_init
        self._pending = None
        self.register_load_state_dict_post_hook(_refresh_init_flag)

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, metric={self.metric!r}, decay={self.decay}, "
                f"learnable={self.learnable}, threshold_ema_dead_code={self.threshold_ema_dead_code}")

    def search(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code of each row of x [N, D]: (index int64[N], distance[N]) by the fused patchvq.nearest_code."""
        if self._needs_init and x.shape[0] > 0:
            warnings.warn(
                "patchvq: the codebook waits for k-means init (kmeans_init=True) and holds zeros; "
                "run a training forward or call maybe_init first",
                RuntimeWarning,
                stacklevel=3,
            )
        return nearest_code(x, self.weight, self.metric)

    def codes(self) -> torch.Tensor:
        """The codes [K, D] as the metric compares them (unit rows for "cosine"); differentiable when learnable."""
        return self._in_metric_space(self.weight) if self.learnable else self.weight

    def syncing(self) -> bool:
        """Whether statistics are shared across ranks now (`sync`, or torch.distributed being initialised)."""
        return distributed.active() if self.sync is None else bool(self.sync)

    def maybe_init(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """k-means init from the rows of x [N, D] (only rows where valid [N] is True) on the first call; no-op after.

        Only with kmeans_init=True. Runs eagerly (not traced by torch.compile). When no rank
        has a valid row the codebook stays uninitialised and the next call tries again.
        """
        if self._needs_init:
            self._initialise(x, valid)

    @torch.compiler.disable
    @torch.no_grad()
    def _initialise(self, x: torch.Tensor, valid: torch.Tensor | None) -> None:
        sync = self.syncing()
        _, world = distributed.rank_and_size(sync)
        x = self._in_metric_space(x.detach().reshape(-1, self.dim).to(self.weight.dtype))
        valid = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if valid is None else valid.reshape(-1)
        per_rank = -(-self.kmeans_sample_size // world)
        rows, available = kmeans.sample_rows(x, valid, per_rank)
        slot = x.new_zeros(per_rank, self.dim + 2)
        slot[: rows.shape[0], : self.dim] = rows
        slot[: rows.shape[0], self.dim] = (torch.arange(rows.shape[0], device=x.device) < available).to(x.dtype)
        slot[0, self.dim + 1] = valid.sum().to(x.dtype)
        gathered = distributed.gather_slots(slot, sync).reshape(-1, self.dim + 2)
        sample = gathered[gathered[:, self.dim] > 0, : self.dim]
        if sample.shape[0] == 0:
            return
        centers = torch.zeros_like(self.weight)
        count = torch.zeros_like(self.ema_count)
        if not sync or distributed.rank_and_size(sync)[0] == 0:
            found_centers, found_count = kmeans.fit(sample, self.num_codes, self.kmeans_iters, self.metric)
            centers.copy_(found_centers)
            count.copy_(found_count)
        distributed.broadcast_from_first(centers, sync)
        distributed.broadcast_from_first(count, sync)
        count *= gathered[:, self.dim + 1].sum() / sample.shape[0]
        self._set_weight(centers)
        self.ema_count.copy_(count)
        self.ema_sum.copy_(centers * count[:, None])
        self.initialised.fill_(True)
        self._needs_init = False

    @torch.no_grad()
    def ema_update(self, x: torch.Tensor, index: torch.Tensor, *, weight=None, accumulate: bool = False,
                   refresh: bool | None = None, revive: bool = True) -> None:
        """EMA of per-code counts and sums of x [N, D] by index int64[N] (-1 = ignore), then dead-code revival.

        Uses patchvq.code_stats (no one-hot, no N x K). With ema_codes the codes move to the
        smoothed EMA means (`refresh`, default ema_codes). Revival draws replacement rows from the
        valid rows of x (`revive`). `weight`: a tensor [K] (or scalar) scaling each code's EMA step
        (1 - decay) * weight, or a callable (sum [K, D], count [K]) -> such a tensor.
        `accumulate=True` only adds this batch's statistics to a pending total that the next
        update without it folds in (several micro-batches, one EMA step); nothing else changes.
        """
        x = self._in_metric_space(x.detach().reshape(-1, self.dim))
        sync = self.syncing()
        rank, world = distributed.rank_and_size(sync)
        count, total = code_stats(x, index, self.num_codes)
        reviving = self.threshold_ema_dead_code > 0 and revive and not accumulate
        if reviving:
            candidates, available = kmeans.sample_rows(x.to(self.weight.dtype), index >= 0, self.num_codes)
            per_rank = count.new_zeros(world)
            per_rank[rank] = available
        if sync:
            parts = [count, total.reshape(-1)] + ([per_rank] if reviving else [])
            packed = distributed.all_reduce_sum(torch.cat(parts), sync)
            count = packed[: self.num_codes]
            total = packed[self.num_codes : self.num_codes * (self.dim + 1)].reshape(self.num_codes, self.dim)
            if reviving:
                per_rank = packed[self.num_codes * (self.dim + 1) :]
        pending = getattr(self, "_pending", None)
        if accumulate:
            self._pending = (count, total) if pending is None else (pending[0] + count, pending[1] + total)
            return
        if pending is not None:
            count, total = count + pending[0], total + pending[1]
            self._pending = None
        step = 1.0 - self.decay
        if callable(weight):
            weight = weight(total, count)
        if weight is None:
            self.ema_count.lerp_(count.to(self.ema_count.dtype), step)
            self.ema_sum.lerp_(total.to(self.ema_sum.dtype), step)
        else:
            w = torch.as_tensor(weight, dtype=self.ema_count.dtype, device=self.ema_count.device) * step
            w = w.reshape(-1) if w.dim() > 0 else w
            self.ema_count.lerp_(count.to(self.ema_count.dtype), w)
            self.ema_sum.lerp_(total.to(self.ema_sum.dtype), w[:, None] if w.dim() > 0 else w)
        if self.ema_codes if refresh is None else refresh:
            self.refresh_codes()
        if reviving:
            self._revive(candidates, per_rank.round().long(), rank, sync)

    @torch.no_grad()
    def refresh_codes(self) -> None:
        """Set the codes to the Laplace-smoothed EMA means (what an EMA update does after its statistics)."""
        self._set_weight(self._ema_codes())

    @torch.no_grad()
    def expire(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Dead-code revival alone: codes whose EMA count is below threshold_ema_dead_code take rows of x [N, D]."""
        if self.threshold_ema_dead_code <= 0:
            return
        x = self._in_metric_space(x.detach().reshape(-1, self.dim)).to(self.weight.dtype)
        valid = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if valid is None else valid.reshape(-1)
        sync = self.syncing()
        rank, world = distributed.rank_and_size(sync)
        candidates, available = kmeans.sample_rows(x, valid, self.num_codes)
        per_rank = self.ema_count.new_zeros(world)
        per_rank[rank] = available
        per_rank = distributed.all_reduce_sum(per_rank, sync)
        self._revive(candidates, per_rank.round().long(), rank, sync)

    def _set_weight(self, value: torch.Tensor) -> None:
        # .data for a Parameter: an in-place update that autograd does not see (a code used earlier in the
        # step keeps its graph), as the EMA of a learnable codebook (orthogonal regularisation) needs.
        (self.weight.data if isinstance(self.weight, torch.nn.Parameter) else self.weight).copy_(value)

    def _ema_codes(self) -> torch.Tensor:
        """Codes from the EMA with Laplace-smoothed counts; a code with no mass keeps its value."""
        count = self.ema_count
        total = count.sum()
        smoothed = (count + self.eps) / (total + self.num_codes * self.eps) * total
        means = self.ema_sum / smoothed.clamp_min(torch.finfo(count.dtype).tiny)[:, None]
        return torch.where(smoothed[:, None] > 0, self._in_metric_space(means), self.weight)

    def _revive(self, candidates: torch.Tensor, per_rank: torch.Tensor, rank: int, sync: bool) -> None:
        """Replace dead codes by candidate rows; the j-th dead code takes the j-th row of all ranks' candidates."""
        dead = self.ema_count < self.threshold_ema_dead_code
        dead_rank = dead.long().cumsum(0) - 1
        offset = per_rank.cumsum(0) - per_rank
        take = dead & (dead_rank < per_rank.sum())
        local = dead_rank - offset[rank]
        mine = take & (local >= 0) & (local < per_rank[rank])
        rows = candidates[local.clamp(0, candidates.shape[0] - 1)]
        replacement = distributed.all_reduce_sum(torch.where(mine[:, None], rows, torch.zeros_like(rows)), sync)
        threshold = self.threshold_ema_dead_code
        self._set_weight(torch.where(take[:, None], replacement, self.weight))
        self.ema_count.copy_(torch.where(take, torch.full_like(self.ema_count, threshold), self.ema_count))
        self.ema_sum.copy_(torch.where(take[:, None], replacement * threshold, self.ema_sum))
        self.revived += take.sum()

    def _in_metric_space(self, t: torch.Tensor) -> torch.Tensor:
        return F.normalize(t, dim=-1) if self.metric == "cosine" else t

    @torch.no_grad()
    def usage(self, live_threshold: float | None = None) -> dict[str, float]:
        """Usage statistics from the EMA counts: {"perplexity", "live_fraction", "revived"}.

        perplexity: exp of the entropy of the EMA code-usage distribution (K when all codes are
        used equally, 1 when one code takes everything). live_fraction: share of codes whose EMA
        count is at least `live_threshold` (default: threshold_ema_dead_code when set, else 1,
        i.e. used about once per step or more). revived: codes revived since construction.
        """
        if live_threshold is None:
            live_threshold = self.threshold_ema_dead_code if self.threshold_ema_dead_code > 0 else 1.0
        count = self.ema_count.double()
        total = count.sum()
        share = count / total if total > 0 else torch.full_like(count, 1.0 / self.num_codes)
        entropy = -(share * share.clamp_min(1e-300).log()).sum()
        return {
            "perplexity": float(entropy.exp()),
            "live_fraction": float((count >= live_threshold).double().mean()),
            "revived": float(self.revived),
        }


def _refresh_init_flag(module: Codebook, incompatible_keys) -> None:
    module._needs_init = not bool(module.initialised)


def _check_arguments(num_codes, dim, decay, eps, kmeans_iters, threshold, metric) -> None:
    if not isinstance(num_codes, int) or num_codes < 1:
        raise ValueError(f"patchvq: num_codes must be a positive int, got {num_codes!r}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"patchvq: dim must be a positive int, got {dim!r}")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"patchvq: decay must be in [0, 1] (1 freezes the EMA), got {decay!r}")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"patchvq: eps must be a positive number, got {eps!r}")
    if not isinstance(kmeans_iters, int) or kmeans_iters < 0:
        raise ValueError(f"patchvq: kmeans_iters must be a non-negative int, got {kmeans_iters!r}")
    if not threshold >= 0:
        raise ValueError(f"patchvq: threshold_ema_dead_code must be >= 0, got {threshold!r}")
    if metric not in METRICS:
        raise ValueError(f"patchvq: metric must be one of {METRICS}, got {metric!r}")
