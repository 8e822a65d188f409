"""PatchVQ: patch-aware vector quantisation with a dynamic choice of code resolution per patch."""

import dataclasses
import itertools
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from patchvq.layers import budget, routing
from patchvq.layers.codebook import Codebook
from patchvq.ops import patch_assign


@dataclass(frozen=True)
class PatchVQConfig:
    """PatchVQ's method settings, with the defaults of the method (docs/patch_vq.md marks our choices)."""

    num_codes: int = 512
    commitment_weight: float = 0.25
    decay: float = 0.99
    eps: float = 1e-5
    kmeans_init: bool = True
    kmeans_iters: int = 10
    threshold_ema_dead_code: float = 2.0
    metric: str = "l2"
    router_hidden: int = 64
    temperature_start: float = 1.0
    temperature_end: float = 0.3
    rho_final: float = 0.4
    budget_ramp: float = 0.5
    budget_weight: float = 1.0


@dataclass
class PatchVQLoss:
    """Loss parts: commitment (already times commitment_weight, each vector weighted by the share
    of the finest grid it covers) and budget (unweighted; `total` applies budget_weight)."""

    commitment: torch.Tensor
    budget: torch.Tensor
    budget_weight: float

    @property
    def total(self) -> torch.Tensor:
        return self.commitment + self.budget_weight * self.budget


@dataclass
class PatchVQOutput:
    """What PatchVQ returns. Unpacks like VectorQuantize's result: `z_q, indices, loss = vq(x)`.

    z_q [B, dim, H_0, W_0]: the chosen codes merged on the finest grid (times the router gate).
    level_map int64 [B, Hc, Wc]: the level index chosen per patch (0 = finest).
    indices: per level int64 [B, H_l, W_l], -1 where that level was not chosen.
    loss: PatchVQLoss. usage: {"level_share" [L], "spent_fraction" [], "perplexity" []} of this batch.
    logits [B, L, Hc, Wc]: the router's scores. distance [B, H_0, W_0]: distance of each fine
    cell's covering vector to its code.
    """

    z_q: torch.Tensor
    level_map: torch.Tensor
    indices: list[torch.Tensor]
    loss: PatchVQLoss
    usage: dict[str, torch.Tensor]
    logits: torch.Tensor
    distance: torch.Tensor

    def __iter__(self):
        return iter((self.z_q, self.indices, self.loss.total))


class PatchVQ(torch.nn.Module):
    """Patch-aware VQ: each patch (one cell of the coarsest grid) is quantised at the level a router chooses.

    dim: channels of the input features. levels: strides of the levels, finest first (e.g. (8, 16, 32)),
    each a power-of-two multiple of the first. code_dim: dimension of the codes (dim by default;
    otherwise 1x1 convolutions project in and out). config / settings: PatchVQConfig, with keyword
    settings overriding its fields (PatchVQ(64, num_codes=256)).

    forward(x, *, level_map=None, richness=None, budget_target=None) -> PatchVQOutput
      x: one feature map [B, dim, H, W] (the finest level; the coarser ones are derived by learned
         strided convolutions, initialised as average pooling), or a list of level maps
         [B, dim, H / f_l, W / f_l], finest first.
      level_map: int [B, Hc, Wc], an external level choice that overrides the router.
      richness: [B, Hc, Wc] in [0, 1] (budget.patch_richness of the input images): fine codes
         cost more in simple patches. budget_target: overrides the scheduled target.
    Training: hard Gumbel-softmax routing at the scheduled temperature, k-means init on the first
    call, EMA codebook updates with dead-code revival. Eval: argmax routing, no updates.
    Call set_progress(step / total_steps) during training to drive the temperature and budget.
    """

    def __init__(
        self,
        dim: int,
        levels: tuple[int, ...] = (8, 16, 32),
        *,
        code_dim: int | None = None,
        config: PatchVQConfig | None = None,
        **settings,
    ):
        super().__init__()
        _check_positive_int(dim, "dim")
        if code_dim is not None:
            _check_positive_int(code_dim, "code_dim")
        if config is not None and not isinstance(config, PatchVQConfig):
            raise TypeError(f"patchvq: config must be a PatchVQConfig, got {type(config).__name__}")
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(PatchVQConfig)})
        if unknown:
            raise TypeError(f"patchvq: unknown PatchVQ settings {unknown}; the settings are PatchVQConfig's fields")
        self.config = dataclasses.replace(config or PatchVQConfig(), **settings)
        _check_config(self.config)
        self.strides = _check_strides(levels)
        self.factors = [s // self.strides[0] for s in self.strides]
        self.dim = dim
        self.code_dim = code_dim or dim
        cfg = self.config
        self.project_in = torch.nn.Conv2d(dim, self.code_dim, 1) if self.code_dim != dim else torch.nn.Identity()
        self.project_out = torch.nn.Conv2d(self.code_dim, dim, 1) if self.code_dim != dim else torch.nn.Identity()
        self.downsample = torch.nn.ModuleList(_pooling_conv(self.code_dim, f) for f in self.factors[1:])
        self.router = routing.DynamicRouter(self.code_dim, len(self.factors), cfg.router_hidden)
        self.codebook = Codebook(
            cfg.num_codes,
            self.code_dim,
            decay=cfg.decay,
            eps=cfg.eps,
            kmeans_init=cfg.kmeans_init,
            kmeans_iters=cfg.kmeans_iters,
            threshold_ema_dead_code=cfg.threshold_ema_dead_code,
            metric=cfg.metric,
        )
        self.costs = budget.level_costs(self.factors)
        self.register_buffer("progress", torch.zeros(()))

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (step / total steps): sets the Gumbel temperature and budget target."""
        if isinstance(progress, torch.Tensor) and progress.numel() == 1:
            progress = float(progress)
        if isinstance(progress, bool) or not isinstance(progress, numbers.Real) or not 0.0 <= progress <= 1.0:
            raise ValueError(f"patchvq: progress must be a number in [0, 1], got {progress!r}")
        self.progress.fill_(progress)

    def temperature(self) -> torch.Tensor:
        return routing.gumbel_temperature(self.progress, self.config.temperature_start, self.config.temperature_end)

    def budget_target(self) -> torch.Tensor:
        return budget.budget_target(self.progress, self.config.rho_final, self.config.budget_ramp)

    def usage(self) -> dict[str, float]:
        """Codebook usage over training: {"perplexity", "live_fraction", "revived"} (see Codebook.usage)."""
        return self.codebook.usage()

    def levels_of(self, x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        """The code-space level maps [B, code_dim, H_l, W_l], finest first, from one map or a list."""
        if isinstance(x, torch.Tensor):
            _check_map(x, self.dim, "x")
            fine_h, fine_w = x.shape[2:]
            coarse = self.factors[-1]
            if fine_h == 0 or fine_w == 0:
                raise ValueError(
                    f"patchvq: x grid {fine_h}x{fine_w} is empty: it needs at least one patch of "
                    f"{coarse}x{coarse} cells (the coarsest factor)"
                )
            if fine_h % coarse or fine_w % coarse:
                raise ValueError(f"patchvq: x grid {fine_h}x{fine_w} is not a multiple of the coarsest factor {coarse}")
            fine = self.project_in(x)
            return [fine, *(down(fine) for down in self.downsample)]
        if not isinstance(x, (list, tuple)) or len(x) != len(self.factors):
            raise ValueError(
                f"patchvq: expected one map or a list of {len(self.factors)} level maps, got {_describe(x)}"
            )
        for i, lv in enumerate(x):
            _check_map(lv, self.dim, f"levels[{i}]")
            if lv.shape[2] == 0 or lv.shape[3] == 0:
                raise ValueError(f"patchvq: levels[{i}] grid {tuple(lv.shape[2:])} is empty: it needs at least one cell")
            if lv.shape[2] * self.factors[i] != x[0].shape[2] or lv.shape[3] * self.factors[i] != x[0].shape[3]:
                raise ValueError(
                    f"patchvq: levels[{i}] grid {tuple(lv.shape[2:])} is not the finest grid "
                    f"{tuple(x[0].shape[2:])} divided by {self.factors[i]}"
                )
        return [self.project_in(lv) for lv in x]

    def forward(
        self,
        x,
        *,
        level_map: torch.Tensor | None = None,
        richness: torch.Tensor | None = None,
        budget_target: torch.Tensor | float | None = None,
    ) -> PatchVQOutput:
        levels = self.levels_of(x)
        if self.config.metric == "cosine":
            levels = [F.normalize(lv, dim=1) for lv in levels]
        logits = self.router(levels)
        if level_map is not None:
            choice = _check_level_map(level_map, tuple(logits[:, 0].shape), len(levels), logits.device)
            gate = routing.one_hot_gate(choice, len(levels), logits.dtype)
        elif self.training:
            gate, choice = routing.hard_gumbel_gate(logits, self.temperature().to(logits.device))
        else:
            gate, choice = routing.argmax_gate(logits)
        if richness is not None:
            _check_richness(richness, tuple(logits[:, 0].shape), logits.device)
        rows = [lv.permute(0, 2, 3, 1).reshape(-1, self.code_dim) for lv in levels]
        all_rows = torch.cat(rows)
        # An empty batch (B = 0) has nothing to learn from: no codebook init or update.
        learn = self.training and all_rows.shape[0] > 0
        if learn:
            self.codebook.maybe_init(all_rows.detach())
        codes = self.codebook.weight.detach()
        z_q, indices, distance = patch_assign(levels, choice, codes, self.config.metric)
        chosen_gate = (gate * routing.one_hot_gate(choice, len(levels), gate.dtype)).sum(1)
        z_q = z_q * _upsample(chosen_gate, self.factors[-1])[:, None].to(z_q.dtype)
        flat_index = torch.cat([index.reshape(-1) for index in indices])
        loss = PatchVQLoss(
            commitment=self._commitment(rows, indices, codes, z_q.shape),
            budget=budget.budget_loss(gate, self.costs, self._target(budget_target, gate), richness),
            budget_weight=self.config.budget_weight,
        )
        if learn:
            self.codebook.ema_update(all_rows, flat_index)
        patches = max(choice.numel(), 1)  # an empty batch: zero shares and spend, not NaN
        usage = {
            "level_share": F.one_hot(choice, len(levels)).flatten(0, 2).float().sum(0) / patches,
            "spent_fraction": budget.spent_fraction(gate.detach(), self.costs).sum() / max(gate.shape[0], 1),
            "perplexity": _perplexity(
                flat_index, self.config.num_codes, [index.numel() for index in indices], self.factors
            ),
        }
        return PatchVQOutput(self.project_out(z_q), choice, indices, loss, usage, logits, distance)

    def _target(self, override, gate: torch.Tensor) -> torch.Tensor:
        if override is not None and not isinstance(override, torch.Tensor):
            if isinstance(override, bool) or not isinstance(override, numbers.Real) or not 0.0 <= override <= 1.0:
                raise ValueError(f"patchvq: budget_target must be a number in [0, 1], got {override!r}")
        target = self.budget_target() if override is None else torch.as_tensor(override)
        return target.to(device=gate.device, dtype=gate.dtype)

    def _commitment(self, rows, indices, codes, fine_shape) -> torch.Tensor:
        """commitment_weight * sum over chosen vectors of (covered share of the finest grid) *
        mean over channels of (z_e - sg(code))^2: the mean over the finest grid of the merged error."""
        batch, _, fine_h, fine_w = fine_shape
        total = rows[0].new_zeros((), dtype=torch.float32)
        for row, index, factor in zip(rows, indices, self.factors):
            flat = index.reshape(-1)
            error = (row.float() - codes[flat.clamp_min(0)].float()).pow(2).mean(1)
            total = total + torch.where(flat >= 0, error, torch.zeros_like(error)).sum() * factor**2
        return self.config.commitment_weight * total / max(batch * fine_h * fine_w, 1)


def _perplexity(flat_index: torch.Tensor, num_codes: int, sizes: list[int], factors: list[int]) -> torch.Tensor:
    """exp(entropy) of the code usage in this batch, each chosen vector counted by the fine cells it covers."""
    weight = torch.cat([torch.full((n,), float(f * f), device=flat_index.device) for n, f in zip(sizes, factors)])
    weight = weight * (flat_index >= 0)
    counts = torch.zeros(num_codes, device=flat_index.device).scatter_add_(0, flat_index.clamp_min(0), weight)
    share = counts / counts.sum().clamp_min(1e-12)
    return torch.exp(-(share * share.clamp_min(1e-12).log()).sum())


def _upsample(t: torch.Tensor, factor: int) -> torch.Tensor:
    return t.repeat_interleave(factor, 1).repeat_interleave(factor, 2) if factor > 1 else t


def _pooling_conv(dim: int, factor: int) -> torch.nn.Conv2d:
    """A learned strided projection by `factor`, initialised to average pooling."""
    conv = torch.nn.Conv2d(dim, dim, factor, stride=factor)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[torch.arange(dim), torch.arange(dim)] = 1.0 / factor**2
        conv.bias.zero_()
    return conv


def _check_config(cfg: PatchVQConfig) -> None:
    """The numeric settings PatchVQ itself uses (the codebook checks its own)."""
    def number(name, low, high=math.inf, low_open=False):
        v = getattr(cfg, name)
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and (v > low if low_open else v >= low) and v <= high
        if not ok:
            bounds = f"{'(' if low_open else '['}{low}, {high}{']' if high < math.inf else ')'}"
            raise ValueError(f"patchvq: {name} must be a number in {bounds}, got {v!r}")

    number("temperature_start", 0.0, low_open=True)
    number("temperature_end", 0.0, low_open=True)
    number("rho_final", 0.0, 1.0)
    number("budget_ramp", 0.0, 1.0)
    number("budget_weight", 0.0)
    number("commitment_weight", 0.0)
    _check_positive_int(cfg.router_hidden, "router_hidden")


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"patchvq: {name} must be a positive int, got {value!r}")


def _check_strides(levels) -> list[int]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
        raise ValueError(f"patchvq: levels must be a non-empty list of positive int strides, got {levels!r}")
    levels = tuple(levels)
    if not levels or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in levels):
        raise ValueError(
            f"patchvq: levels must be a non-empty list of positive int strides (e.g. (8, 16, 32)), got {levels!r}"
        )
    strides = [int(s) for s in levels]
    for prev, s in itertools.pairwise(strides):
        ratio = s // strides[0]
        if s <= prev or s % strides[0] or ratio & (ratio - 1):
            raise ValueError(f"patchvq: levels must be ascending power-of-two multiples of the first, got {levels!r}")
    return strides


def _check_level_map(level_map, shape: tuple, num_levels: int, device: torch.device) -> torch.Tensor:
    """level_map as int64 [B, Hc, Wc] on device, or a ValueError naming it and what it must be."""
    if (
        not isinstance(level_map, torch.Tensor)
        or level_map.is_floating_point()
        or level_map.is_complex()
        or level_map.dtype == torch.bool
        or tuple(level_map.shape) != shape
    ):
        raise ValueError(
            f"patchvq: level_map must be an integer [B, Hc, Wc] = {shape} tensor, got {_describe(level_map)}"
        )
    choice = level_map.to(device=device, dtype=torch.int64)
    if choice.numel() and (int(choice.min()) < 0 or int(choice.max()) >= num_levels):
        raise ValueError(
            f"patchvq: level_map values must be level indices in [0, {num_levels}), got values in "
            f"[{int(choice.min())}, {int(choice.max())}]"
        )
    return choice


def _check_richness(richness, shape: tuple, device: torch.device) -> None:
    if not isinstance(richness, torch.Tensor) or not richness.is_floating_point() or tuple(richness.shape) != shape:
        raise ValueError(
            f"patchvq: richness must be a floating [B, Hc, Wc] = {shape} tensor (one value per patch of the "
            f"coarsest grid, e.g. budget.patch_richness(images, patch_size)), got {_describe(richness)}"
        )
    if richness.device != device:
        raise ValueError(f"patchvq: richness is on {richness.device} but the features are on {device}")
    if richness.numel() and not bool(((richness >= 0) & (richness <= 1)).all()):
        raise ValueError("patchvq: richness must hold values in [0, 1] (NaN or out-of-range values found)")


def _check_map(t, dim: int, name: str) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 4 or t.shape[1] != dim:
        raise ValueError(f"patchvq: {name} must be a floating [B, {dim}, H, W] tensor, got {_describe(t)}")


def _describe(t) -> str:
    return f"shape {tuple(t.shape)}, {t.dtype}" if isinstance(t, torch.Tensor) else f"a {type(t).__name__}"
