"""VectorQuantize: a drop-in for vector_quantize_pytorch.VectorQuantize on the fused kernels."""

import torch
import torch.nn.functional as F

from patchvq.layers import estimators, layout
from patchvq.layers.codebook import Codebook

# Arguments of vector_quantize_pytorch.VectorQuantize this layer does not implement, with the
# value that turns each feature off there. Passing that value is accepted; anything else raises.
UNSUPPORTED = {
    "heads": 1,
    "separate_codebook_per_head": False,
    "sync_kmeans": True,
    "layernorm_after_project_in": False,
    "accept_3d_fmap": False,
    "commitment_use_cross_entropy_loss": False,
    "orthogonal_reg_weight": 0.0,
    "orthogonal_reg_active_codes_only": False,
    "orthogonal_reg_max_codes": None,
    "codebook_diversity_loss_weight": 0.0,
    "codebook_diversity_temperature": 100.0,
    "stochastic_sample_codes": False,
    "sample_codebook_temp": 1.0,
    "straight_through": False,
    "directional_reparam": False,
    "directional_reparam_variance": 5e-3,
    "sync_affine_param": False,
    "vq_bridge": None,
    "manual_ema_update": False,
    "in_place_codebook_optimizer": None,
    "manual_in_place_optimizer_update": False,
    "affine_param": False,
    "affine_param_batch_decay": 0.99,
    "affine_param_codebook_decay": 0.9,
    "sync_update_v": 0.0,
}


class VectorQuantize(torch.nn.Module):
    """Vector quantisation with an EMA codebook, by the fused patchvq.nearest_code and code_stats kernels.

    Same constructor arguments, meanings and defaults as vector_quantize_pytorch.VectorQuantize
    for those it supports (see docs/vector_quantize.md), with one deliberate difference:
    the gradient estimator is straight-through unless rotation_trick=True. The other arguments of
    that class are accepted only with the value that disables them (UNSUPPORTED); any other value
    raises ValueError.

    forward(x, mask=None) -> (quantized, indices, loss):
      x: [B, N, D] (channel_last), [B, D, N] (channel_last=False), [B, D, H, W]
         (accept_image_fmap=True) or [B, D] (one vector per sample).
      mask: bool [B, N] ([B, H, W] for image maps), True where a position is real. Masked
         positions are not quantised (indices -1, output zeros or the input with
         return_zeros_for_masked_padding=False) and are left out of the statistics, k-means,
         revival and loss. `lens` [B] is the same as mask = arange(N) < lens.
      quantized: same shape and dtype as x. indices: int64, x's shape without D.
      loss: in training, commitment_weight * mean over real positions and channels of
         (x - sg[q])^2 (q without stop-gradient when learnable_codebook); zero in eval.
    Training updates the codebook (EMA, revival) in the forward pass; eval never does.

    torch.compile: training and eval forwards compile with fullgraph=True and never sync the
    host. With kmeans_init=True the k-means runs eagerly on the first training forward; under
    fullgraph=True run that step (or `self.codebook_module.maybe_init(rows)`) before compiling.
    """

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int | None = None, *, decay: float = 0.8,
                 eps: float = 1e-5, freeze_codebook: bool = False, kmeans_init: bool = False, kmeans_iters: int = 10,
                 use_cosine_sim: bool = False, threshold_ema_dead_code: float = 0, channel_last: bool = True,
                 accept_image_fmap: bool = False, commitment_weight: float = 1.0, rotation_trick: bool | None = False,
                 sync_codebook: bool | None = None, ema_update: bool | None = None,
                 learnable_codebook: bool | None = None, return_zeros_for_masked_padding: bool = True,
                 route_gradients_to_input: bool = True, **other):
        super().__init__()
        _reject_unsupported(other)
        learnable_codebook = bool(learnable_codebook)
        ema_update = (not learnable_codebook) if ema_update is None else bool(ema_update)
        if ema_update and learnable_codebook:
            raise ValueError("patchvq: learnable_codebook=True trains the codebook by gradient; set ema_update=False")
        self.dim = dim
        self.codebook_size = codebook_size
        codebook_dim = dim if codebook_dim is None else codebook_dim
        self.project_in = torch.nn.Linear(dim, codebook_dim) if codebook_dim != dim else torch.nn.Identity()
        self.project_out = torch.nn.Linear(codebook_dim, dim) if codebook_dim != dim else torch.nn.Identity()
        self.codebook_module = Codebook(
            codebook_size, codebook_dim, decay=decay, eps=eps, kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=threshold_ema_dead_code, metric="cosine" if use_cosine_sim else "l2",
            learnable=learnable_codebook, sync=sync_codebook, ema_codes=ema_update,
        )
        self.freeze_codebook = freeze_codebook
        self.use_cosine_sim = use_cosine_sim
        self.channel_last = channel_last
        self.accept_image_fmap = accept_image_fmap
        self.commitment_weight = float(commitment_weight)
        self.rotation_trick = bool(rotation_trick)
        self.learnable_codebook = learnable_codebook
        self.ema_update = ema_update
        self.return_zeros_for_masked_padding = return_zeros_for_masked_padding
        self.route_gradients_to_input = route_gradients_to_input

    @property
    def codebook(self) -> torch.Tensor:
        """The codes [K, codebook_dim]."""
        return self.codebook_module.weight

    def usage(self) -> dict[str, float]:
        """{"perplexity", "live_fraction", "revived"} of the codebook (see Codebook.usage)."""
        return self.codebook_module.usage()

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for int64 indices, laid out like the quantised output before project_out."""
        codes = F.embedding(indices.clamp_min(0), self.codebook_module.codes())
        return layout.from_rows(codes.reshape(-1, codes.shape[-1]), self._layout(indices.shape, codes.shape[-1]))

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """project_out of the codes for int64 indices: what forward returns for those indices."""
        return self._from_codes(self.get_codes_from_indices(indices))

    def _from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if isinstance(self.project_out, torch.nn.Identity):
            return codes
        moved = codes.movedim(-1 if self._channels_last() else 1, -1)
        out = self.project_out(moved)
        return out if self._channels_last() else out.movedim(-1, 1)

    def _channels_last(self) -> bool:
        return self.channel_last and not self.accept_image_fmap

    def _layout(self, index_shape: torch.Size, dim: int) -> layout.Layout:
        return layout.Layout(tuple(index_shape), dim, self._channels_last())

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                lens: torch.Tensor | None = None, freeze_codebook: bool | None = None):
        if indices is not None:
            raise ValueError("patchvq: forward(indices=...) (cross-entropy to given codes) is not supported")
        if mask is not None and lens is not None:
            raise ValueError("patchvq: pass either mask or lens, not both")
        shape = layout.of_input(x, self.dim, self.channel_last, self.accept_image_fmap)
        if lens is not None:
            mask = torch.arange(shape.index_shape[1], device=x.device) < lens[:, None]
        valid = layout.mask_rows(mask, shape.index_shape)
        rows = self.project_in(layout.to_rows(x, shape))
        if self.use_cosine_sim:
            rows = F.normalize(rows, dim=-1)
        frozen = self.freeze_codebook if freeze_codebook is None else freeze_codebook
        book = self.codebook_module
        if self.training:
            book.maybe_init(rows, valid)
        index, _ = book.search(rows.detach())
        if valid is not None:
            index = torch.where(valid, index, torch.full_like(index, -1))
        out, quantized = self._quantize(rows, index.clamp_min(0), frozen)
        loss = self._loss(rows, quantized, valid)
        if self.training and not frozen:
            book.ema_update(rows, index)
        out = self.project_out(out).to(x.dtype)
        if valid is not None:
            kept = torch.zeros_like(out) if self.return_zeros_for_masked_padding else layout.to_rows(x, shape)
            out = torch.where(valid[:, None], out, kept)
        return layout.from_rows(out, shape), index.reshape(shape.index_shape), loss

    def _quantize(self, rows: torch.Tensor, index: torch.Tensor, frozen: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(output rows with the gradient estimator applied, quantised rows for the loss), both [M, codebook_dim].

        Straight-through gathers the codes in one autograd node whose gradient goes to `rows`, so
        no x + (q - x).detach() temporaries are made; the loss then reads the same values.
        """
        codes = self.codebook_module.codes()
        learning = self.learnable_codebook and not frozen
        estimating = self.training and self.route_gradients_to_input and rows.requires_grad
        if estimating and not self.rotation_trick:
            out = estimators.straight_through_codes(rows, codes.detach(), index)
            quantized = F.embedding(index, codes).to(rows.dtype) if learning else out.detach()
            return out, quantized
        quantized = F.embedding(index, codes if learning else codes.detach()).to(rows.dtype)
        return (estimators.rotation_trick(rows, quantized) if estimating else quantized), quantized

    def _loss(self, rows: torch.Tensor, quantized: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """commitment_weight * mean over real rows and channels of (rows - q)^2; q detached unless learnable.

        Zero in eval and when there is no real row (an empty or all-masked batch).
        """
        if not self.training or self.commitment_weight <= 0 or rows.shape[0] == 0:
            return torch.zeros((), device=rows.device)
        target = quantized if self.learnable_codebook else quantized.detach()
        if valid is None:
            return F.mse_loss(rows.float(), target.float()) * self.commitment_weight
        per_row = (rows - target).float().pow(2).sum(-1) * valid
        real = valid.sum() * rows.shape[-1]
        return per_row.sum() / real.clamp_min(1) * self.commitment_weight


def _reject_unsupported(other: dict) -> None:
    for name, value in other.items():
        if name not in UNSUPPORTED:
            raise TypeError(f"patchvq: VectorQuantize got an unexpected keyword argument {name!r}")
        if value != UNSUPPORTED[name]:
            raise ValueError(
                f"patchvq: VectorQuantize does not support {name}={value!r} (only {UNSUPPORTED[name]!r}); "
                "see docs/vector_quantize.md for the supported arguments"
            )
