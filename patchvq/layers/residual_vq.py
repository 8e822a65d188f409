"""ResidualVQ and GroupedResidualVQ: drop-ins for vector-quantize-pytorch's, on patchvq's VectorQuantize.

Residual quantisation (Zeghidour et al. 2021, Algorithm 1): each quantizer quantises what
the previous ones left, so a training step runs one fused nearest-code search and one
code_stats pass per quantizer, never an N x K matrix.
"""

import random
from functools import partial

import torch
import torch.nn.functional as F

from patchvq.layers import distributed, estimators, kmeans
from patchvq.layers.vector_quantize import VectorQuantize, _directional_reparam
from patchvq.ops import nearest_code

_BLOCK = 4096  # rows per block in the fused backward


class _ResidualCodes(torch.autograd.Function):
    """Output sum_i q_i and per-quantizer commitment losses of residual quantisation, whose backward recomputes
    the residuals from the input and the indices a block of rows at a time.

    The forward already ran the searches (`indices` [Q, N], `codes` the Q codebooks as searched); it
    saves only the input rows and the indices, so a training step holds a few N x D buffers whatever
    the number of quantizers. Gradient into x: for each quantizer, the rotation trick's (or the
    identity with straight-through) map of the output gradient at that quantizer's residual, plus
    the commitment gradient weight * 2 (r_i - q_i) / (N D).
    """

    @staticmethod
    def forward(ctx, x, indices, summed, losses, codes, rotation, weights):
        ctx.save_for_backward(x, indices)
        ctx.codes, ctx.rotation, ctx.weights = codes, rotation, weights
        ctx.mark_non_differentiable(indices)
        return summed, losses

    @staticmethod
    def backward(ctx, grad_out, grad_losses):
        x, indices = ctx.saved_tensors
        n, d = x.shape
        grad_x = torch.zeros_like(x)
        scale = 2.0 / max(n * d, 1)
        for start in range(0, n, _BLOCK):
            r = x[start : start + _BLOCK].clone()
            g = None if grad_out is None else grad_out[start : start + _BLOCK]
            acc = grad_x[start : start + _BLOCK]
            for i, codes in enumerate(ctx.codes):
                q = F.embedding(indices[i, start : start + _BLOCK], codes).to(r.dtype)
                c = None
                if grad_losses is not None and ctx.weights[i] != 0:
                    c = float(ctx.weights[i] * scale) * grad_losses[i]
                if g is not None and ctx.rotation:
                    lam, alpha, beta = estimators.rotation_coefficients(r, q, g)
                    if c is not None:  # the commitment gradient c (r - q) folds into the coefficients
                        alpha, beta = alpha + c, beta - c
                    acc.addcmul_(g, lam).addcmul_(r, alpha).addcmul_(q, beta)
                else:
                    if g is not None:
                        acc += g
                    if c is not None:
                        acc.addcmul_(r, c).addcmul_(q, -c)
                r -= q
        return grad_x, None, None, None, None, None, None


class ImplicitCodebookMLP(torch.nn.Module):
    """The implicit neural codebook of QINCo (Huijben et al. 2024): codes conditioned on the partial sum so far.

    forward(codes [K, D] or [H, K, D], condition=[B, N, D]) -> codes per position [(H,) B, N, K, D].
    Parameter names match vector-quantize-pytorch's MLP (proj_in, layers.i.{0,2}).
    """

    def __init__(self, dim: int, dim_hidden: int | None = None, depth: int = 4, l2norm_output: bool = False):
        super().__init__()
        dim_hidden = dim if dim_hidden is None else dim_hidden
        self.proj_in = torch.nn.Linear(2 * dim, dim)
        self.layers = torch.nn.ModuleList([
            torch.nn.Sequential(torch.nn.Linear(dim, dim_hidden), torch.nn.SiLU(), torch.nn.Linear(dim_hidden, dim))
            for _ in range(depth)
        ])
        self.l2norm_output = l2norm_output

    def forward(self, codes: torch.Tensor, *, condition: torch.Tensor) -> torch.Tensor:
        one = codes.dim() == 2
        if one:
            codes = codes[None]
        if condition.dim() == 2:
            condition = condition[:, None]
        heads, k, d = codes.shape
        b, n = condition.shape[0], condition.shape[1]
        c = condition[None, :, :, None, :].expand(heads, b, n, k, d)
        e = codes[:, None, None].expand(heads, b, n, k, d)
        h = self.proj_in(torch.cat((c, e), -1))
        for layer in self.layers:
            h = layer(h) + h
        if self.l2norm_output:
            h = F.normalize(h, dim=-1)
        return h[0] if one else h


def _maybe_sync_seed(device) -> int:
    seed = torch.randint(0, 10_000, (), device=device)
    if distributed.active():
        distributed.all_reduce_sum(seed, True)
    return int(seed.item())


class ResidualVQ(torch.nn.Module):
    """vector-quantize-pytorch's ResidualVQ, same arguments, defaults and outputs; the quantizers are
    patchvq VectorQuantize layers (extra keyword arguments go to them).

    forward(x, mask=None, indices=None, return_all_codes=False, sample_codebook_temp=None,
            freeze_codebook=False, beam_size=None, rand_quantize_dropout_fixed_seed=None)
      -> (quantized like x, indices [..., num_quantizers] (-1 for dropped quantizers), losses [num_quantizers]
          [, all codes [num_quantizers, ..., D]]); with indices=: (quantized, summed cross-entropy).
    Beam search (beam_size > 1) is not implemented and raises (docs/vector_quantize.md).
    """

    def __init__(self, *, dim: int, num_quantizers: int | None = None, codebook_size, codebook_dim: int | None = None,
                 shared_codebook: bool = False, diveq: bool = False, heads: int = 1, quantize_dropout: bool = False,
                 quantize_dropout_cutoff_index: int = 0, quantize_dropout_multiple_of: int = 1,
                 accept_image_fmap: bool = False, implicit_neural_codebook: bool = False, mlp_kwargs: dict | None = None,
                 beam_size: int | None = None, eval_beam_size: int | None = None,
                 beam_score_quantizer_weights=None, quant_grad_frac: float = 0.0,
                 return_zeros_for_masked_padding: bool = True, **vq_kwargs):
        super().__init__()
        if heads != 1:
            raise ValueError("patchvq: ResidualVQ works with heads=1 (as vector-quantize-pytorch)")
        if num_quantizers is None and not isinstance(codebook_size, tuple):
            raise ValueError("patchvq: ResidualVQ needs num_quantizers or a tuple of codebook sizes")
        for size in (beam_size, eval_beam_size):
            if size is not None and size > 1:
                raise ValueError("patchvq: ResidualVQ beam search (beam_size > 1) is not supported; "
                                 "see docs/vector_quantize.md")
        codebook_dim = dim if codebook_dim is None else codebook_dim
        self.dim, self.codebook_dim = dim, codebook_dim
        self.has_projections = codebook_dim != dim
        self.project_in = torch.nn.Linear(dim, codebook_dim) if self.has_projections else torch.nn.Identity()
        self.project_out = torch.nn.Linear(codebook_dim, dim) if self.has_projections else torch.nn.Identity()
        self.accept_image_fmap = accept_image_fmap
        self.return_zeros_for_masked_padding = return_zeros_for_masked_padding
        vq_kwargs["return_zeros_for_masked_padding"] = return_zeros_for_masked_padding
        self.implicit_neural_codebook = implicit_neural_codebook
        if implicit_neural_codebook:
            vq_kwargs.update(learnable_codebook=True, ema_update=False)
        if shared_codebook:
            vq_kwargs.update(manual_ema_update=True, manual_in_place_optimizer_update=True)
        self.diveq = diveq
        if diveq:
            vq_kwargs.update(ema_update=False, learnable_codebook=True, route_gradients_to_input=False,
                             commitment_weight=0.0)
        sizes = codebook_size if isinstance(codebook_size, tuple) else (codebook_size,) * num_quantizers
        num_quantizers = len(sizes) if num_quantizers is None else num_quantizers
        if len(sizes) != num_quantizers:
            raise ValueError(f"patchvq: {len(sizes)} codebook sizes for {num_quantizers} quantizers")
        self.num_quantizers = num_quantizers
        self.codebook_sizes = sizes
        self.uniform_codebook_size = len(set(sizes)) == 1
        self.layers = torch.nn.ModuleList([
            VectorQuantize(dim=codebook_dim, codebook_size=size, codebook_dim=codebook_dim,
                           accept_image_fmap=accept_image_fmap, **vq_kwargs)
            for size in sizes
        ])
        self.quantize_dropout = bool(quantize_dropout) and num_quantizers > 1
        if quantize_dropout_cutoff_index < 0:
            raise ValueError("patchvq: quantize_dropout_cutoff_index must be >= 0")
        self.quantize_dropout_cutoff_index = quantize_dropout_cutoff_index
        self.quantize_dropout_multiple_of = quantize_dropout_multiple_of
        self.vq_is_ema_updating = self.layers[0].ema_update
        if self.vq_is_ema_updating and diveq:
            raise ValueError("patchvq: diveq does not go with ema_update")
        self.quant_grad_frac = quant_grad_frac if not diveq else 1.0
        self.beam_size = beam_size
        self.eval_beam_size = eval_beam_size if eval_beam_size is not None else beam_size
        if implicit_neural_codebook:
            self.mlps = torch.nn.ModuleList([
                ImplicitCodebookMLP(dim=codebook_dim, l2norm_output=self.layers[0].use_cosine_sim,
                                    **(mlp_kwargs or {}))
                for _ in range(num_quantizers - 1)
            ])
        else:
            self.mlps = (None,) * (num_quantizers - 1)
        self.shared_codebook = shared_codebook
        if shared_codebook:
            if not self.uniform_codebook_size:
                raise ValueError("patchvq: shared_codebook needs one codebook size")
            first = self.layers[0]
            for layer in self.layers[1:]:
                layer.codebook_module = first.codebook_module
                layer.affine = first.affine
                layer.vq_bridge = first.vq_bridge

    @property
    def codebook_size(self) -> int:
        return self.layers[0].codebook_size

    @property
    def codebooks(self):
        """The codes [num_quantizers, K, D] (a tuple when the sizes differ)."""
        books = tuple(layer.codebook for layer in self.layers)
        return torch.stack(books) if self.uniform_codebook_size else books

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes [num_quantizers, ..., D] for indices [..., q] (-1 and missing trailing quantizers give zeros)."""
        q = indices.shape[-1]
        if q < self.num_quantizers:
            if not self.quantize_dropout:
                raise ValueError("patchvq: fewer indices than quantizers needs quantize_dropout=True")
            indices = F.pad(indices, (0, self.num_quantizers - q), value=-1)
        dropped = indices == -1
        safe = indices.clamp_min(0)
        mlps = (None, *self.mlps)
        codes, partial_sum = [], 0
        for n, layer in enumerate(self.layers):
            book = layer._effective_codes(0, layer._books()[0], grad=True)
            if mlps[n] is not None:
                shaped = safe[..., n].reshape(safe.shape[0], -1)
                cond = partial_sum if torch.is_tensor(partial_sum) else torch.zeros(
                    *shaped.shape, book.shape[-1], device=book.device, dtype=book.dtype)
                table = mlps[n](book, condition=cond.reshape(*shaped.shape, -1))
                c = table.gather(2, shaped[..., None, None].expand(-1, -1, 1, table.shape[-1]))[:, :, 0]
                c = c.reshape(*safe.shape[:-1], -1)
            else:
                c = F.embedding(safe[..., n], book)
            c = c.masked_fill(dropped[..., n, None], 0.0)
            codes.append(c)
            partial_sum = partial_sum + c
        return torch.stack(codes)

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """project_out of the summed codes: what forward returns (in eval) for those indices."""
        out = self.project_out(self.get_codes_from_indices(indices).sum(0))
        return out.movedim(-1, 1) if self.accept_image_fmap else out

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, indices=None,
                return_all_codes: bool = False, sample_codebook_temp: float | None = None,
                freeze_codebook: bool = False, beam_size: int | None = None,
                rand_quantize_dropout_fixed_seed: int | None = None):
        beam = beam_size if beam_size is not None else (self.beam_size if self.training else self.eval_beam_size)
        if beam is not None and beam > 1:
            raise ValueError("patchvq: ResidualVQ beam search (beam_size > 1) is not supported")
        if self.accept_image_fmap and indices is not None:
            raise ValueError("patchvq: indices= does not go with accept_image_fmap")
        if isinstance(indices, list):
            indices = torch.stack(indices, -1)
        returning_loss = indices is not None
        if returning_loss and bool((indices == -1).any()):
            raise ValueError("patchvq: indices passed to ResidualVQ hold -1 (dropped quantizers); "
                             "take them from eval mode")
        orig = x
        if not returning_loss and mask is None and self._fusable():
            return self._fused_forward(x, return_all_codes, freeze_codebook, rand_quantize_dropout_fixed_seed)
        x = self.project_in(x.movedim(1, -1) if self.accept_image_fmap else x)
        if self.accept_image_fmap:
            x = x.movedim(-1, 1)
        residual = x
        quantized_out = torch.zeros_like(x)
        dropout = self.training and self.quantize_dropout and not returning_loss
        last = self.num_quantizers - 1
        if dropout:
            seed = rand_quantize_dropout_fixed_seed
            if seed is None:
                seed = _maybe_sync_seed(x.device)
            last = random.Random(seed).randrange(self.quantize_dropout_cutoff_index, self.num_quantizers)
            if self.quantize_dropout_multiple_of != 1:
                m = self.quantize_dropout_multiple_of
                last = -(-(last + 1) // m) * m - 1
        mlps = (None, *self.mlps) if self.implicit_neural_codebook else (None,) * self.num_quantizers
        all_indices, all_losses, ce_losses, residuals = [], [], [], []
        for n, (layer, mlp) in enumerate(zip(self.layers, mlps)):
            if n > last:
                all_indices.append(None)
                all_losses.append(None)
                continue
            transform = partial(mlp, condition=quantized_out) if mlp is not None else None
            residuals.append(residual)
            out = layer(residual, mask=mask, indices=indices[..., n] if returning_loss else None,
                        sample_codebook_temp=sample_codebook_temp, freeze_codebook=freeze_codebook,
                        codebook_transform_fn=transform)
            if returning_loss:
                ce_losses.append(out[1])
                continue
            quantized, layer_indices, loss = out
            frac = self.quant_grad_frac
            kept = quantized.detach() if frac <= 0 else frac * quantized + (1 - frac) * quantized.detach()
            residual = residual - kept
            quantized_out = quantized_out + quantized
            all_indices.append(layer_indices)
            all_losses.append(loss)
        if self.training and self.shared_codebook and not freeze_codebook:
            shared = self.layers[0]
            if self.vq_is_ema_updating:
                shared.update_ema()
                shared.update_in_place_optimizer()
            rows = torch.cat([r.detach().movedim(1, -1) if self.accept_image_fmap else r.detach()
                              for r in residuals]).reshape(-1, self.codebook_dim)
            shared.expire_codes_(rows)
        if self.diveq:
            quantized_out = _directional_reparam(x, quantized_out, 5e-3)
        if self.accept_image_fmap:
            quantized_out = self.project_out(quantized_out.movedim(1, -1)).movedim(-1, 1)
        else:
            quantized_out = self.project_out(quantized_out)
        if mask is not None:
            kept = torch.zeros_like(quantized_out) if self.return_zeros_for_masked_padding else orig
            quantized_out = torch.where(mask[..., None], quantized_out, kept)
        if returning_loss:
            return quantized_out, sum(ce_losses)
        template = next(i for i in all_indices if i is not None)
        all_indices = torch.stack([i if i is not None else torch.full_like(template, -1) for i in all_indices], -1)
        zero = torch.zeros((), device=x.device)
        all_losses = torch.stack([(l if l is not None else zero).float().reshape(()) for l in all_losses])
        if not return_all_codes:
            return quantized_out, all_indices, all_losses
        return quantized_out, all_indices, all_losses, self.get_codes_from_indices(all_indices)


    def _dropout_last(self, seed) -> int:
        if not (self.training and self.quantize_dropout):
            return self.num_quantizers - 1
        if seed is None:
            seed = _maybe_sync_seed(self.layers[0].codebook.device)
        last = random.Random(seed).randrange(self.quantize_dropout_cutoff_index, self.num_quantizers)
        if self.quantize_dropout_multiple_of != 1:
            m = self.quantize_dropout_multiple_of
            last = -(-(last + 1) // m) * m - 1
        return last

    def _fusable(self) -> bool:
        """Whether the fused path (_ResidualCodes) computes what the layer loop would: EMA or fixed Euclidean
        codebooks, straight-through or rotation-trick gradients, squared commitment loss, channel-last input."""
        if self.implicit_neural_codebook or self.diveq or self.accept_image_fmap or self.quant_grad_frac != 0:
            return False
        for layer in self.layers:
            if (layer.learnable_codebook or layer._books()[0].learnable or layer.use_cosine_sim
                    or layer.affine is not None or layer.vq_bridge is not None or layer.heads != 1
                    or layer.stochastic_sample_codes and self.training or layer.straight_through
                    or layer.directional_reparam or layer.commitment_use_cross_entropy_loss
                    or layer.codebook_diversity_loss_weight > 0 or layer.orthogonal_reg_weight > 0
                    or layer.sync_update_v > 0 or layer.in_place_codebook_optimizer is not None
                    or not layer.route_gradients_to_input or layer.has_projections):
                return False
        return True

    def _fused_forward(self, x, return_all_codes, freeze_codebook, seed):
        """The layer loop for _fusable configurations: one search and one EMA update per quantizer, the
        residual updated in place, nothing per quantizer kept for backward but its indices."""
        rows_in = self.project_in(x)
        shape = rows_in.shape
        rows = rows_in.reshape(-1, self.codebook_dim)
        last = self._dropout_last(seed)
        training = self.training
        residual = rows.detach().clone()
        summed = torch.zeros_like(residual)
        n = rows.shape[0]
        indices = torch.full((self.num_quantizers, n), -1, dtype=torch.long, device=rows.device)
        losses = torch.zeros(self.num_quantizers, device=rows.device)
        used_codes, weights, samples = [], [], []
        reviving_shared = self.shared_codebook and training and not freeze_codebook
        for i, layer in enumerate(self.layers[: last + 1]):
            book = layer.codebook_module
            if training:
                book.maybe_init(residual)
            codes = book.weight.detach().clone() if training else book.weight.detach()
            index, _ = nearest_code(residual, codes, "l2")
            weight = layer.commitment_weight if (training and layer.has_commitment_loss) else 0.0
            if training and not freeze_codebook:
                layer._update_book(book, 0, residual, index, layer.ema_update, None, False)
                if reviving_shared and book.threshold_ema_dead_code > 0:
                    every = torch.ones(n, dtype=torch.bool, device=residual.device)
                    samples.append(kmeans.sample_rows(residual, every, book.num_codes)[0])
            squared = torch.zeros((), device=rows.device)
            for start in range(0, n, _BLOCK):  # blocks of rows: no N x D temporaries
                q = F.embedding(index[start : start + _BLOCK], codes).to(residual.dtype)
                r = residual[start : start + _BLOCK]
                if weight != 0:
                    squared += F.mse_loss(r.float(), q.float(), reduction="sum")
                summed[start : start + _BLOCK] += q
                r -= q
            if weight != 0 and n:
                losses[i] = squared / (n * self.codebook_dim) * weight
            indices[i] = index
            used_codes.append(codes)
            weights.append(weight)
        del residual
        if reviving_shared:
            shared = self.layers[0]
            if self.vq_is_ema_updating:
                shared.update_ema()
            if samples:
                shared.expire_codes_(torch.cat(samples))
        rotation = self.layers[0].rotation_trick
        if training and torch.is_grad_enabled() and rows.requires_grad and x.requires_grad:
            summed, losses = _ResidualCodes.apply(rows, indices[: last + 1], summed, losses, tuple(used_codes),
                                                  rotation, tuple(weights))
        quantized = self.project_out(summed.reshape(shape))
        all_indices = indices.t().reshape(*shape[:-1], self.num_quantizers)
        if not return_all_codes:
            return quantized, all_indices, losses
        return quantized, all_indices, losses, self.get_codes_from_indices(all_indices)


class GroupedResidualVQ(torch.nn.Module):
    """vector-quantize-pytorch's GroupedResidualVQ: the channels split into `groups`, one ResidualVQ each.

    forward -> (quantized like x, indices [groups, ..., q], losses [groups, q][, codes]).
    """

    def __init__(self, *, dim: int, groups: int = 1, accept_image_fmap: bool = False, **kwargs):
        super().__init__()
        if dim % groups:
            raise ValueError(f"patchvq: dim={dim} is not a multiple of groups={groups}")
        self.dim, self.groups = dim, groups
        self.accept_image_fmap = accept_image_fmap
        self.rvqs = torch.nn.ModuleList([
            ResidualVQ(dim=dim // groups, accept_image_fmap=accept_image_fmap, **kwargs) for _ in range(groups)
        ])

    @property
    def codebooks(self):
        return torch.stack(tuple(rvq.codebooks for rvq in self.rvqs))

    @property
    def split_dim(self) -> int:
        return 1 if self.accept_image_fmap else -1

    def get_codes_from_indices(self, indices):
        return torch.stack(tuple(rvq.get_codes_from_indices(i) for rvq, i in zip(self.rvqs, indices)))

    def get_output_from_indices(self, indices):
        outs = tuple(rvq.get_output_from_indices(i) for rvq, i in zip(self.rvqs, indices))
        return torch.cat(outs, dim=self.split_dim)

    def forward(self, x: torch.Tensor, indices=None, return_all_codes: bool = False,
                sample_codebook_temp: float | None = None, freeze_codebook: bool = False,
                mask: torch.Tensor | None = None):
        if x.shape[self.split_dim] != self.dim:
            raise ValueError(f"patchvq: x has {x.shape[self.split_dim]} channels, the layer dim={self.dim}")
        chunks = x.chunk(self.groups, dim=self.split_dim)
        indices = () if indices is None else indices
        if len(indices) not in (0, self.groups):
            raise ValueError(f"patchvq: indices for {len(indices)} groups, the layer has {self.groups}")
        seed = _maybe_sync_seed(x.device) if self.training else None
        kwargs = dict(return_all_codes=return_all_codes, sample_codebook_temp=sample_codebook_temp, mask=mask,
                      freeze_codebook=freeze_codebook, rand_quantize_dropout_fixed_seed=seed)
        outs = tuple(rvq(chunk, indices=indices[n] if len(indices) else None, **kwargs)
                     for n, (rvq, chunk) in enumerate(zip(self.rvqs, chunks)))
        outs = tuple(zip(*outs))
        if len(indices):
            quantized, ce = outs
            return torch.cat(quantized, dim=self.split_dim), sum(ce)
        quantized, all_indices, losses, *codes = outs
        return (torch.cat(quantized, dim=self.split_dim), torch.stack(all_indices), torch.stack(losses), *codes)
