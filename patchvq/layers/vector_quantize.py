"""VectorQuantize: a drop-in for vector_quantize_pytorch.VectorQuantize on the fused kernels."""

import math
from collections import namedtuple

import torch
import torch.nn.functional as F

from patchvq.layers import code_softmax, distributed, estimators, layout
from patchvq.layers.codebook import Codebook
from patchvq.ops import nearest_code

LossBreakdown = namedtuple("LossBreakdown", ["commitment", "codebook_diversity", "orthogonal_reg", "inplace_optimize"])

_AFFINE = ("codebook_mean", "codebook_variance", "batch_mean", "batch_variance")


class _Affine(torch.nn.Module):
    """EMA of the batch and codebook mean and variance per codebook ([H, 1, D]), for affine_param=True."""

    def __init__(self, books: int, dim: int, batch_decay: float, codebook_decay: float):
        super().__init__()
        self.batch_decay, self.codebook_decay = batch_decay, codebook_decay
        for name in _AFFINE:
            self.register_buffer(name, torch.zeros(books, 1, dim) if "mean" in name else torch.ones(books, 1, dim))
            self.register_buffer(name + "_needs_init", torch.tensor(True))

    @torch.no_grad()
    def update(self, name: str, j: int, value: torch.Tensor, decay: float) -> None:
        old, first = getattr(self, name), getattr(self, name + "_needs_init")
        value = value.to(old.dtype)
        old[j].copy_(torch.where(first, value, old[j] * decay + value * (1 - decay)))
        if j == old.shape[0] - 1:
            first.fill_(False)

    def stds(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.codebook_variance[j].clamp_min(1e-5).sqrt(), self.batch_variance[j].clamp_min(1e-5).sqrt()


class _UpstreamCodebookView:
    """vector-quantize-pytorch's `vq._codebook` attributes (embed [H, K, D], cluster_size, embed_avg, ...).

    With one codebook these are views of ours (writes go through); with separate codebooks per
    head they are stacked copies.
    """

    def __init__(self, vq: "VectorQuantize"):
        self._vq = vq

    def _stack(self, name):
        books = self._vq._books()
        if len(books) == 1:
            return getattr(books[0], name).unsqueeze(0)
        return torch.stack([getattr(b, name) for b in books])

    embed = property(lambda self: self._stack("weight"))
    cluster_size = property(lambda self: self._stack("ema_count"))
    embed_avg = property(lambda self: self._stack("ema_sum"))
    initted = property(lambda self: self._vq._books()[0].initialised)
    codebook_size = property(lambda self: self._vq.codebook_size)
    decay = property(lambda self: self._vq._books()[0].decay)
    eps = property(lambda self: self._vq._books()[0].eps)
    use_cosine_sim = property(lambda self: self._vq.use_cosine_sim)
    ema_update = property(lambda self: self._vq.ema_update)

    def transform_input(self, x):
        return F.normalize(x, dim=-1, eps=1e-6) if self._vq.use_cosine_sim else x

    def update_ema(self):
        self._vq.update_ema()

    def parameters(self):
        return self._vq._codebook_parameters()


class VectorQuantize(torch.nn.Module):
    """Vector quantisation with an EMA codebook, by the fused patchvq.nearest_code and code_stats kernels.

    The constructor arguments, forward keywords, defaults and meanings are those of
    vector_quantize_pytorch.VectorQuantize (see docs/vector_quantize.md): multi-head codes,
    image/3-d maps, EMA or learnable codebooks, the rotation trick (on by default for dim > 1),
    straight-through and DiVeQ estimators, commitment (squared or cross-entropy), diversity and
    orthogonal losses, stochastic and top-k codes, affine codebook statistics.

    forward(x, indices=None, mask=None, lens=None, topk=None, sample_codebook_temp=None,
            freeze_codebook=None, return_loss_breakdown=False, codebook_transform_fn=None,
            ema_update_weight=None, accum_ema_update=False, ema_update=None)
      -> (quantized, indices, loss[, LossBreakdown]); (quantized codes, cross-entropy) with indices=.
      x: [B, N, D] (channel_last), [B, D, N] (channel_last=False), [B, D, H, W]
         (accept_image_fmap), [B, D, T, H, W] (accept_3d_fmap) or [B, D].
      mask: bool, x's shape without D; True where a position is real. Masked positions are not
         quantised (indices -1, output zeros or the input with return_zeros_for_masked_padding=False)
         and are left out of the statistics, k-means, revival and commitment loss. `lens` [B]
         (integer tensor) is the same as mask = arange(N) < lens.
      indices: int64, x's shape without D (with a last axis of `heads` when heads > 1, of topk with topk).
    Training updates the codebook (EMA, revival) in the forward pass; eval never does.

    The nearest-code search never forms an N x K matrix, nor do the options that need all K
    logits of each row (patchvq.layers.code_softmax): stochastic codes, top-k and the
    cross-entropy commitment run in fused kernels (patchvq.topk_code, patchvq.code_logsumexp);
    the diversity loss and the Gumbel straight-through soft codes go block by block.

    torch.compile: the default training and eval forwards compile with fullgraph=True and never
    sync the host. With kmeans_init=True the k-means runs eagerly on the first training forward;
    under fullgraph=True run that step (or `maybe_init`) before compiling.
    """

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int | None = None, heads: int = 1,
                 separate_codebook_per_head: bool = False, decay: float = 0.8, eps: float = 1e-5,
                 freeze_codebook: bool = False, kmeans_init: bool = False, kmeans_iters: int = 10,
                 sync_kmeans: bool = True, use_cosine_sim: bool = False, layernorm_after_project_in: bool = False,
                 threshold_ema_dead_code: float = 0, channel_last: bool = True, accept_image_fmap: bool = False,
                 accept_3d_fmap: bool = False, commitment_weight: float = 1.0,
                 commitment_use_cross_entropy_loss: bool = False, orthogonal_reg_weight: float = 0.0,
                 orthogonal_reg_active_codes_only: bool = False, orthogonal_reg_max_codes: int | None = None,
                 codebook_diversity_loss_weight: float = 0.0, codebook_diversity_temperature: float = 100.0,
                 stochastic_sample_codes: bool = False, sample_codebook_temp: float = 1.0,
                 straight_through: bool = False, rotation_trick: bool | None = None,
                 directional_reparam: bool = False, directional_reparam_variance: float = 5e-3,
                 sync_codebook: bool | None = None, sync_affine_param: bool = False, ema_update: bool | None = None,
                 vq_bridge: torch.nn.Module | None = None, manual_ema_update: bool = False,
                 learnable_codebook: bool | None = None, in_place_codebook_optimizer=None,
                 manual_in_place_optimizer_update: bool = False, affine_param: bool = False,
                 affine_param_batch_decay: float = 0.99, affine_param_codebook_decay: float = 0.9,
                 sync_update_v: float = 0.0, return_zeros_for_masked_padding: bool = True,
                 route_gradients_to_input: bool = True):
        super().__init__()
        ema_update = (not directional_reparam and vq_bridge is None) if ema_update is None else bool(ema_update)
        if learnable_codebook is None:
            learnable_codebook = directional_reparam or vq_bridge is not None
        learnable_codebook = bool(learnable_codebook)
        if rotation_trick is None:
            rotation_trick = not directional_reparam and dim > 1
        _check_options(heads=heads, codebook_size=codebook_size, straight_through=straight_through,
                       rotation_trick=rotation_trick, directional_reparam=directional_reparam,
                       threshold_ema_dead_code=threshold_ema_dead_code, learnable_codebook=learnable_codebook,
                       ema_update=ema_update, use_cosine_sim=use_cosine_sim, vq_bridge=vq_bridge,
                       sync_update_v=sync_update_v, affine_param=affine_param,
                       accept=(accept_image_fmap, accept_3d_fmap))
        self.dim = dim
        self.codebook_size = codebook_size
        self.heads = heads
        self.separate_codebook_per_head = bool(separate_codebook_per_head)
        codebook_dim = dim if codebook_dim is None else codebook_dim
        self.codebook_dim = codebook_dim
        inner = codebook_dim * heads
        self.has_projections = inner != dim
        if self.has_projections:
            linear = torch.nn.Linear(dim, inner)
            self.project_in = (torch.nn.Sequential(linear, torch.nn.LayerNorm(inner))
                               if layernorm_after_project_in else linear)
            self.project_out = torch.nn.Linear(inner, dim)
        else:
            self.project_in = torch.nn.Identity()
            self.project_out = torch.nn.Identity()
        self.use_cosine_sim = use_cosine_sim
        self.metric = "cosine" if use_cosine_sim else "l2"
        book_learnable = learnable_codebook or orthogonal_reg_weight > 0

        def make_book():
            return Codebook(codebook_size, codebook_dim, decay=decay, eps=eps, kmeans_init=kmeans_init,
                            kmeans_iters=kmeans_iters, threshold_ema_dead_code=threshold_ema_dead_code,
                            metric=self.metric, learnable=book_learnable, sync=sync_codebook, ema_codes=ema_update)

        if self.separate_codebook_per_head and heads > 1:
            self.codebook_modules = torch.nn.ModuleList([make_book() for _ in range(heads)])
        else:
            self.codebook_module = make_book()
        books = heads if (self.separate_codebook_per_head and heads > 1) else 1
        self.affine = _Affine(books, codebook_dim, affine_param_batch_decay, affine_param_codebook_decay) \
            if affine_param else None
        self.sync_affine_param = sync_affine_param
        self.vq_bridge = vq_bridge
        self.freeze_codebook = freeze_codebook
        self.channel_last = channel_last
        self.accept_image_fmap = accept_image_fmap
        self.accept_3d_fmap = accept_3d_fmap
        self.commitment_weight = float(commitment_weight)
        self.has_commitment_loss = commitment_weight > 0 and not directional_reparam
        self.commitment_use_cross_entropy_loss = commitment_use_cross_entropy_loss
        self.orthogonal_reg_weight = float(orthogonal_reg_weight)
        self.orthogonal_reg_active_codes_only = orthogonal_reg_active_codes_only
        self.orthogonal_reg_max_codes = orthogonal_reg_max_codes
        self.codebook_diversity_loss_weight = float(codebook_diversity_loss_weight)
        self.codebook_diversity_temperature = float(codebook_diversity_temperature)
        self.stochastic_sample_codes = stochastic_sample_codes
        self.sample_codebook_temp = sample_codebook_temp
        self.straight_through = straight_through
        self.rotation_trick = bool(rotation_trick)
        self.directional_reparam = directional_reparam
        self.directional_reparam_variance = directional_reparam_variance
        self.learnable_codebook = learnable_codebook
        self.ema_update = ema_update
        self.manual_ema_update = manual_ema_update
        self.sync_update_v = float(sync_update_v)
        self.return_zeros_for_masked_padding = return_zeros_for_masked_padding
        self.route_gradients_to_input = route_gradients_to_input
        self.sync_kmeans = sync_kmeans
        self.in_place_codebook_optimizer = (in_place_codebook_optimizer(self._codebook_parameters())
                                            if in_place_codebook_optimizer is not None else None)
        self.manual_in_place_optimizer_update = manual_in_place_optimizer_update
        self.register_load_state_dict_pre_hook(_load_upstream_keys)

    # --- codebooks -------------------------------------------------------------------------

    def _books(self) -> list[Codebook]:
        return list(self.codebook_modules) if hasattr(self, "codebook_modules") else [self.codebook_module]

    def _codebook_parameters(self):
        params = [p for book in self._books() for p in book.parameters()]
        if self.vq_bridge is not None:
            params += list(self.vq_bridge.parameters())
        return params

    @property
    def _codebook(self) -> _UpstreamCodebookView:
        """vector-quantize-pytorch's codebook attributes (embed, cluster_size, embed_avg, update_ema)."""
        return _UpstreamCodebookView(self)

    @property
    def codebook(self) -> torch.Tensor:
        """The codes [K, codebook_dim] ([heads, K, codebook_dim] with separate codebooks per head)."""
        books = self._books()
        return books[0].weight if len(books) == 1 else torch.stack([b.weight for b in books])

    @codebook.setter
    def codebook(self, codes: torch.Tensor) -> None:
        with torch.no_grad():
            books = self._books()
            codes = codes.reshape(len(books), *books[0].weight.shape)
            for book, value in zip(books, codes):
                book._set_weight(value)

    def usage(self) -> dict[str, float]:
        """{"perplexity", "live_fraction", "revived"} of the (first) codebook (see Codebook.usage)."""
        return self._books()[0].usage()

    def maybe_init(self, x: torch.Tensor) -> None:
        """k-means init of every codebook from x (as forward would take it) if not done yet."""
        with torch.no_grad():
            for rows, valid, book, _ in self._groups(self._rows(x)[0], None):
                book.maybe_init(rows, valid)

    def _effective_codes(self, j: int, book: Codebook, grad: bool) -> torch.Tensor:
        """Codes [K, D] as searched: the weight, through vq_bridge and the affine map; detached unless `grad`."""
        codes = book.weight if (grad and book.learnable) else book.weight.detach()
        if self.vq_bridge is not None:
            codes = self.vq_bridge(codes[None])[0]
        if self.affine is not None:
            codebook_std, batch_std = self.affine.stds(j)
            codes = (codes - self.affine.codebook_mean[j]) * (batch_std / codebook_std) + self.affine.batch_mean[j]
        return codes

    # --- indices to codes ------------------------------------------------------------------

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for int64 indices (forward's layout), laid out like the quantised output before project_out."""
        books = self._books()
        if self.heads > 1:
            parts = [F.embedding(indices[..., j].clamp_min(0), self._effective_codes(
                j if len(books) > 1 else 0, books[j if len(books) > 1 else 0], False)) for j in range(self.heads)]
            codes = torch.cat(parts, -1)
        else:
            codes = F.embedding(indices.clamp_min(0), self._effective_codes(0, books[0], False))
        if not self._channels_last() and codes.dim() > 2:
            codes = codes.movedim(-1, 1)
        return codes

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """project_out of the codes for int64 indices: what forward returns for those indices."""
        codes = self.get_codes_from_indices(indices)
        if isinstance(self.project_out, torch.nn.Identity):
            return codes
        last = self._channels_last() or codes.dim() == 2
        out = self.project_out(codes if last else codes.movedim(1, -1))
        return out if last else out.movedim(-1, 1)

    def _channels_last(self) -> bool:
        return self.channel_last and not self.accept_image_fmap and not self.accept_3d_fmap

    # --- rows ------------------------------------------------------------------------------

    def _rows(self, x: torch.Tensor):
        shape = layout.of_input(x, self.dim, self.channel_last, self.accept_image_fmap, self.accept_3d_fmap)
        rows = self.project_in(layout.to_rows(x, shape))
        return rows, shape

    def _groups(self, rows: torch.Tensor, valid: torch.Tensor | None):
        """(rows [M', d], valid [M'] or None, codebook, codebook number) per codebook; heads split off the channels."""
        books = self._books()
        if self.heads == 1 or len(books) == 1:
            r = rows.reshape(-1, self.codebook_dim)
            v = valid if (valid is None or self.heads == 1) else valid.repeat_interleave(self.heads)
            if self.use_cosine_sim:
                r = F.normalize(r, dim=-1, eps=1e-6)
            return [(r, v, books[0], 0)]
        split = rows.reshape(rows.shape[0], self.heads, self.codebook_dim)
        out = []
        for j, book in enumerate(books):
            r = split[:, j]
            if self.use_cosine_sim:
                r = F.normalize(r, dim=-1, eps=1e-6)
            out.append((r, valid, book, j))
        return out

    # --- forward ---------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                lens: torch.Tensor | None = None, topk: int | None = None, sample_codebook_temp: float | None = None,
                freeze_codebook: bool | None = None, return_loss_breakdown: bool = False,
                codebook_transform_fn=None, ema_update_weight=None, accum_ema_update: bool = False,
                ema_update: bool | None = None):
        if mask is not None and lens is not None:
            raise ValueError("patchvq: pass either mask or lens, not both")
        input_requires_grad = x.requires_grad
        rows, shape = self._rows(x)
        if lens is not None:
            mask = _lens_to_mask(lens, shape.index_shape, x.device)
        valid = layout.mask_rows(mask, shape.index_shape)
        frozen = self.freeze_codebook if freeze_codebook is None else bool(freeze_codebook)
        temperature = self.sample_codebook_temp if sample_codebook_temp is None else sample_codebook_temp
        ema = self.ema_update if ema_update is None else bool(ema_update)
        if topk is not None:
            topk = min(int(topk), self.codebook_size)
            if self.heads != 1 or topk < 1 or (self.training and (self.commitment_use_cross_entropy_loss
                                                                   or self.in_place_codebook_optimizer)):
                raise ValueError("patchvq: topk needs heads=1, topk >= 1, and (in training) no cross-entropy "
                                 "commitment loss and no in-place codebook optimizer")
        if codebook_transform_fn is not None and self.heads != 1:
            raise ValueError("patchvq: codebook_transform_fn needs heads=1")
        groups = self._groups(rows, valid)
        training = self.training
        zero = torch.zeros((), device=x.device)
        breakdown = {"commitment": zero, "codebook_diversity": zero, "orthogonal_reg": zero,
                     "inplace_optimize": zero}
        if training:
            for r, v, book, _ in groups:
                book.maybe_init(r, v)
        if self.affine is not None:
            self._update_affine(groups)

        def search(r, v, book, j):
            codes = self._effective_codes(j, book, grad=True)
            transformed = None
            if codebook_transform_fn is not None:
                transformed = self._transformed_codes(codebook_transform_fn, codes, shape)
            stochastic = training and self.stochastic_sample_codes and temperature > 0
            if transformed is not None:
                lg = _transformed_logits(r.detach(), transformed.detach(), self.metric)
                if stochastic:
                    lg = lg / temperature + code_softmax._gumbel(lg.shape, lg.device)
                index = lg.argmax(-1) if topk is None else lg.topk(topk, -1).indices
            elif stochastic or topk is not None:
                index = code_softmax.sample_codes(r.detach(), codes.detach(), self.metric, temperature,
                                                  stochastic=stochastic, topk=topk)
            else:
                index, _ = nearest_code(r.detach(), codes.detach(), self.metric)
            return codes, transformed, index

        found = [search(*g) for g in groups]
        if self.in_place_codebook_optimizer is not None and training and not frozen:
            breakdown["inplace_optimize"] = self._in_place_step(groups, found)
            found = [search(*g) for g in groups]

        outs, quants, idxs = [], [], []
        for (r, v, book, j), (codes, transformed, index) in zip(groups, found):
            if v is not None:
                index = torch.where(v if topk is None else v[:, None], index, torch.full_like(index, -1))
            safe = index.clamp_min(0)
            learning = self.learnable_codebook and not frozen
            if transformed is not None:
                gather = safe if topk is not None else safe[:, None]
                q = transformed.gather(1, gather[..., None].expand(-1, -1, transformed.shape[-1]))
                q = q if topk is not None else q[:, 0]
            else:
                q = F.embedding(safe, codes)
            q = q.to(r.dtype)
            if training and self.straight_through and temperature > 0 and transformed is None and topk is None \
                    and not (input_requires_grad and self.route_gradients_to_input):
                soft = code_softmax.soft_codes(r, codes, temperature, self.metric).to(r.dtype)
                q = q + soft - soft.detach()
            commit_q = q if learning else q.detach()
            out = q
            if training:
                xr = r if topk is None else r[:, None].expand(-1, topk, -1)
                if input_requires_grad and self.route_gradients_to_input:
                    if self.rotation_trick:
                        out = (estimators.rotation_trick_lean(xr, q) if not learning
                               else estimators.rotation_trick(xr, q))
                    elif self.directional_reparam:
                        out = _directional_reparam(xr, q, self.directional_reparam_variance)
                    elif not learning and topk is None and transformed is None and not self.straight_through:
                        out = estimators.straight_through_codes(r, codes.detach(), safe)
                    else:
                        out = estimators.straight_through(xr, q)
                if self.sync_update_v > 0:
                    out = out + self.sync_update_v * (out - out.detach())
            if training and not frozen and topk is None:
                self._update_book(book, j, r, index, ema, ema_update_weight, accum_ema_update)
            outs.append(out)
            quants.append(commit_q)
            idxs.append(index)

        if indices is not None:
            return self._cross_entropy_to(indices, groups, found, outs, shape)

        index = self._merge_heads(idxs, -1)
        loss = zero
        if topk is not None and not training:
            per = sum((o - _expand(g[0], topk)).float().pow(2).mean(-1) for g, o in zip(groups, outs))
            if valid is not None:
                per = per * valid[:, None]
            loss = per * self.commitment_weight if self.has_commitment_loss else per
            breakdown["commitment"] = per
        if training:
            if self.codebook_diversity_loss_weight > 0:
                div = self._diversity_loss(groups, found, shape)
                breakdown["codebook_diversity"] = div
                loss = loss + div * self.codebook_diversity_loss_weight
            if self.has_commitment_loss:
                commit = self._commitment(groups, found, quants, idxs, valid, topk)
                breakdown["commitment"] = commit
                loss = loss + commit * self.commitment_weight
            if self.orthogonal_reg_weight > 0:
                ortho = self._orthogonal_loss(idxs, x.device)
                breakdown["orthogonal_reg"] = ortho
                loss = loss + ortho * self.orthogonal_reg_weight
        if topk is not None and loss.dim() > 0:
            loss = loss.reshape(*shape.index_shape, topk)

        out_rows = self._merge_heads(outs, -1, channels=True)
        out_rows = self.project_out(out_rows).to(x.dtype)
        if valid is not None:
            kept = torch.zeros_like(out_rows) if self.return_zeros_for_masked_padding else \
                _expand(layout.to_rows(x, shape), topk) if topk is not None else layout.to_rows(x, shape)
            sel = valid[:, None] if topk is None else valid[:, None, None]
            out_rows = torch.where(sel, out_rows, kept)
        quantized = self._to_layout(out_rows, shape, topk)
        index = index.reshape(*shape.index_shape, *index.shape[1:])
        if return_loss_breakdown:
            return quantized, index, loss, LossBreakdown(**breakdown)
        return quantized, index, loss

    # --- pieces of forward -----------------------------------------------------------------

    def _merge_heads(self, parts, axis, channels=False):
        if len(parts) == 1:
            p = parts[0]
            if self.heads == 1:
                return p
            return p.reshape(-1, self.heads * p.shape[-1]) if channels else p.reshape(-1, self.heads)
        return torch.cat(parts, -1) if channels else torch.stack(parts, -1)

    def _to_layout(self, out_rows, shape, topk):
        if topk is None:
            return layout.from_rows(out_rows, shape)
        out = out_rows.reshape(*shape.index_shape, topk, out_rows.shape[-1])
        return out if shape.channels_last else out.movedim(-1, 1)

    def _transformed_codes(self, fn, codes, shape):
        if len(shape.index_shape) != 2:
            raise ValueError("patchvq: codebook_transform_fn needs a sequence input [B, N, D]")
        t = fn(codes[None])  # [1, B, N, K, D]
        t = t.reshape(-1, t.shape[-2], t.shape[-1])
        return F.normalize(t, dim=-1) if self.use_cosine_sim else t

    def _update_affine(self, groups):
        for r, v, book, j in groups:
            codes = book.weight.detach()
            if self.training:
                self.affine.update("codebook_mean", j, codes.mean(0, keepdim=True), self.affine.codebook_decay)
                self.affine.update("codebook_variance", j, codes.var(0, unbiased=False, keepdim=True),
                                   self.affine.codebook_decay)
            data = r.detach().float()
            w = torch.ones(data.shape[0], 1, device=data.device) if v is None else v[:, None].float()
            n = w.sum()
            total = (data * w).sum(0, keepdim=True)
            if self.sync_affine_param:
                n = distributed.all_reduce_sum(n.clone(), True)
                total = distributed.all_reduce_sum(total, True)
            mean = total / n.clamp_min(1)
            sq = ((data - mean).pow(2) * w).sum(0, keepdim=True)
            if self.sync_affine_param:
                sq = distributed.all_reduce_sum(sq, True)
            self.affine.update("batch_mean", j, mean, self.affine.batch_decay)
            self.affine.update("batch_variance", j, sq / n.clamp_min(1), self.affine.batch_decay)

    def _update_book(self, book, j, r, index, ema, weight, accumulate):
        if not ema and book.threshold_ema_dead_code <= 0:
            return
        rows = r.detach()
        if self.affine is not None:
            codebook_std, batch_std = self.affine.stds(j)
            rows = (rows - self.affine.batch_mean[j]) * (codebook_std / batch_std) + self.affine.codebook_mean[j]
        book.ema_update(rows, index, weight=_head_weight(weight, j), accumulate=accumulate,
                        refresh=ema and not self.manual_ema_update)

    def _in_place_step(self, groups, found):
        total, count = 0, 0
        for (r, v, _book, _j), (codes, transformed, index) in zip(groups, found):
            q = F.embedding(index, codes) if transformed is None else \
                transformed.gather(1, index[:, None, None].expand(-1, 1, transformed.shape[-1]))[:, 0]
            err = (q - r.detach()).float().pow(2)
            if v is not None:
                err = err[v]
            total, count = total + err.sum(), count + err.numel()
        loss = total / max(count, 1)
        loss.backward()
        if not self.manual_in_place_optimizer_update:
            self.update_in_place_optimizer()
        return loss.detach()

    def update_in_place_optimizer(self) -> None:
        """One step of the in-place codebook optimizer (gradients averaged across ranks when syncing)."""
        opt = self.in_place_codebook_optimizer
        if opt is None:
            return
        if self._books()[0].syncing():
            world = distributed.rank_and_size(True)[1]
            for p in self._codebook_parameters():
                if p.grad is not None:
                    distributed.all_reduce_sum(p.grad, True)
                    p.grad /= world
        opt.step()
        opt.zero_grad()

    def _commitment(self, groups, found, quants, idxs, valid, topk):
        if self.commitment_use_cross_entropy_loss:
            total, count = 0, 0
            for (r, _v, _book, _j), (codes, transformed, _), index in zip(groups, found, idxs):
                if transformed is not None:
                    raise ValueError("patchvq: commitment_use_cross_entropy_loss with codebook_transform_fn "
                                     "is not supported")
                total = total + code_softmax.cross_entropy_sum(r, codes, index, self.metric)
                count = count + (index >= 0).sum()
            return total / count.clamp_min(1)
        if topk is not None:
            per = sum((q - _expand(g[0], topk)).float().pow(2).mean(-1) for g, q in zip(groups, quants))
            return per if valid is None else per * valid[:, None]
        total, count = 0, 0
        for (r, v, _book, _j), q in zip(groups, quants):
            err = (q - r).float().pow(2)
            if v is None:
                total, count = total + err.sum(), count + err.numel()
            else:
                total = total + (err.sum(-1) * v).sum()
                count = count + v.sum() * r.shape[-1]
        if isinstance(count, int):
            return total / max(count, 1) if count else torch.zeros((), device=groups[0][0].device)
        return total / count.clamp_min(1)

    def _diversity_loss(self, groups, found, shape):
        index_shape = shape.index_shape
        batch = index_shape[0]
        positions = int(math.prod(index_shape[1:])) if len(index_shape) > 1 else 1
        codes = torch.stack([c for c, t, _ in found])
        if any(t is not None for _, t, _ in found):
            raise ValueError("patchvq: codebook_diversity_loss_weight with codebook_transform_fn is not supported")
        if len(groups) == 1:
            r = groups[0][0].reshape(batch, positions, self.heads, self.codebook_dim)
        else:
            r = torch.stack([g[0] for g in groups], 1).reshape(batch, positions, self.heads, self.codebook_dim)
        r = r.permute(1, 2, 0, 3)  # [P, H, B, D]
        entropy = code_softmax.diversity_entropy_sum(r, codes, self.codebook_diversity_temperature, self.metric)
        return -entropy / max(positions, 1)

    def _orthogonal_loss(self, idxs, device):
        codes = torch.stack([b.weight for b in self._books()])
        if self.orthogonal_reg_active_codes_only:
            if codes.shape[0] > 1:
                raise ValueError("patchvq: orthogonal_reg_active_codes_only needs one codebook")
            used = torch.unique(torch.cat([i.reshape(-1) for i in idxs]).clamp_min(0))
            codes = codes[:, used]
        k = codes.shape[1]
        if self.orthogonal_reg_max_codes is not None and k > self.orthogonal_reg_max_codes:
            codes = codes[:, torch.randperm(k, device=device)[: self.orthogonal_reg_max_codes]]
        return code_softmax.orthogonal_loss(codes)

    def _cross_entropy_to(self, indices, groups, found, outs, shape):
        target = indices.reshape(-1) if self.heads == 1 else indices.reshape(-1, self.heads)
        total, count = 0, 0
        for n, ((r, _v, _book, _j), (codes, transformed, _)) in enumerate(zip(groups, found)):
            if len(groups) > 1:
                t = target[:, n]
            else:
                t = target.reshape(-1)
            if transformed is not None:
                lg = _transformed_logits(r, transformed, self.metric)
                keep = t >= 0
                total = total + (F.cross_entropy(lg, t.clamp_min(0), reduction="none") * keep).sum()
            else:
                total = total + code_softmax.cross_entropy_sum(r, codes, t, self.metric)
            count = count + (t >= 0).sum()
        quantized = self._merge_heads(outs, -1, channels=True)
        quantized = quantized.reshape(*shape.index_shape, quantized.shape[-1])
        return quantized, total / count.clamp_min(1)

    # --- codebook updates outside forward (vector-quantize-pytorch's API) ------------------

    @torch.no_grad()
    def update_ema(self) -> None:
        """Set the codes from the EMA statistics (with manual_ema_update=True, after the forward passes)."""
        for book in self._books():
            book.refresh_codes()

    @torch.no_grad()
    def expire_codes_(self, x: torch.Tensor) -> None:
        """Dead-code revival from rows x [..., codebook_dim * heads] (projected, not normalised)."""
        rows = x.reshape(-1, self.codebook_dim * self.heads)
        for r, _v, book, _ in self._groups(rows, None):
            book.expire(r)

    @torch.no_grad()
    def update_indices(self, x: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """EMA update (and revival) of the codebook from x and given indices, as a training forward would do."""
        rows, shape = self._rows(x)
        valid = layout.mask_rows(mask, shape.index_shape)
        index = indices.reshape(-1) if self.heads == 1 else indices.reshape(-1, self.heads)
        for n, (r, v, book, j) in enumerate(self._groups(rows, valid)):
            t = index.reshape(-1) if len(self._books()) == 1 else index[:, n]
            if v is not None:
                t = torch.where(v, t, torch.full_like(t, -1))
            self._update_book(book, j, r, t, self.ema_update, None, False)

    update_ema_indices = update_indices


def _expand(r, topk):
    return r[:, None].expand(-1, topk, -1)


def _head_weight(weight, j):
    if weight is None:
        return None
    if callable(weight):
        return lambda total, count: torch.as_tensor(weight(total[None], count[None])).reshape(-1)
    weight = torch.as_tensor(weight)
    return weight[j] if weight.dim() == 2 else weight


def _transformed_logits(r, transformed, metric):
    if metric == "cosine":
        return torch.einsum("nd,nkd->nk", r.float(), transformed.float())
    return -F.pairwise_distance(r.float()[:, None], transformed.float())


def _directional_reparam(x, q, variance):
    error = q - x
    noised = error + math.sqrt(variance) * torch.randn_like(error)
    return x + F.normalize(noised, dim=-1, eps=1e-6).detach() * error.norm(dim=-1, keepdim=True)


def _lens_to_mask(lens, index_shape, device) -> torch.Tensor:
    if not isinstance(lens, torch.Tensor):
        raise TypeError(f"patchvq: lens must be an integer tensor of shape [B], got {type(lens).__name__}")
    if lens.is_floating_point() or lens.is_complex() or lens.dtype == torch.bool:
        raise TypeError(f"patchvq: lens must be an integer tensor of shape [B], got dtype {lens.dtype}")
    if len(index_shape) != 2:
        raise ValueError(f"patchvq: lens needs a sequence input (positions {tuple(index_shape)} are not [B, N]); "
                         "pass mask instead")
    if lens.dim() != 1 or lens.shape[0] != index_shape[0]:
        raise ValueError(f"patchvq: lens must have shape [B] = ({index_shape[0]},), got {tuple(lens.shape)}")
    return torch.arange(index_shape[1], device=device) < lens.to(device)[:, None]


def _check_options(*, heads, codebook_size, straight_through, rotation_trick, directional_reparam,
                   threshold_ema_dead_code, learnable_codebook, ema_update, use_cosine_sim, vq_bridge,
                   sync_update_v, affine_param, accept) -> None:
    problems = []
    if not isinstance(heads, int) or heads < 1:
        problems.append(f"heads must be a positive int, got {heads!r}")
    if sum(map(bool, (straight_through, rotation_trick, directional_reparam))) > 1:
        problems.append("at most one of straight_through, rotation_trick and directional_reparam "
                        "(rotation_trick defaults to True: pass rotation_trick=False)")
    if directional_reparam and threshold_ema_dead_code == 0:
        problems.append("directional_reparam needs dead-code replacement (threshold_ema_dead_code > 0)")
    if straight_through and learnable_codebook:
        problems.append("straight_through (Gumbel) does not go with learnable_codebook")
    if ema_update and learnable_codebook:
        problems.append("learnable_codebook=True trains the codebook by gradient; set ema_update=False")
    if use_cosine_sim and learnable_codebook:
        problems.append("use_cosine_sim does not go with learnable_codebook")
    if vq_bridge is not None and (not learnable_codebook or ema_update):
        problems.append("vq_bridge needs learnable_codebook=True and ema_update=False")
    if not 0 <= sync_update_v <= 1 or (sync_update_v > 0 and not learnable_codebook):
        problems.append("sync_update_v must be in [0, 1], and > 0 only with learnable_codebook")
    if affine_param and use_cosine_sim:
        problems.append("affine_param works with the Euclidean codebook only (use_cosine_sim=False)")
    if all(accept):
        problems.append("accept_image_fmap and accept_3d_fmap are exclusive")
    if problems:
        raise ValueError("patchvq: VectorQuantize: " + "; ".join(problems))


# --- state dicts in vector-quantize-pytorch's layout --------------------------------------------

_BOOK_KEYS = {"weight": "embed", "ema_count": "cluster_size", "ema_sum": "embed_avg", "initialised": "initted"}


def _load_upstream_keys(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    """Rewrite vector-quantize-pytorch's `_codebook.*` keys for `module` into ours before loading."""
    up = prefix + "_codebook."
    if up + "embed" not in state_dict:
        return
    books = module._books()
    for ours, theirs in _BOOK_KEYS.items():
        value = state_dict.pop(up + theirs, None)
        if value is None:
            continue
        for n, book in enumerate(books):
            key = (prefix + "codebook_module." if len(books) == 1 else f"{prefix}codebook_modules.{n}.") + ours
            part = value if ours == "initialised" else value[n if value.shape[0] > 1 else 0]
            state_dict[key] = part
    for n, book in enumerate(books):
        key = (prefix + "codebook_module." if len(books) == 1 else f"{prefix}codebook_modules.{n}.") + "revived"
        state_dict.setdefault(key, book.revived.clone())
    for key in [k for k in state_dict if k.startswith(up + "vq_bridge.")]:
        state_dict[prefix + key[len(up):]] = state_dict.pop(key)
    if module.affine is not None:
        for name in _AFFINE:
            value = state_dict.pop(up + name, None)
            flag = state_dict.pop(up + name + "_needs_init", None)
            if value is not None:
                state_dict[prefix + "affine." + name] = value
                state_dict[prefix + "affine." + name + "_needs_init"] = \
                    flag if flag is not None else torch.tensor(False)
            else:
                state_dict[prefix + "affine." + name] = getattr(module.affine, name).clone()
                state_dict[prefix + "affine." + name + "_needs_init"] = torch.tensor(True)


def upstream_state_dict(module: torch.nn.Module) -> dict:
    """module.state_dict() with every VectorQuantize inside it (the module itself, ResidualVQ layers, ...)
    in vector-quantize-pytorch's key layout (`_codebook.embed` [H, K, D], `cluster_size`, `embed_avg`,
    `initted`, affine buffers), so the matching vector-quantize-pytorch module loads it."""
    state = module.state_dict()
    for name, vq in module.named_modules():
        if not isinstance(vq, VectorQuantize):
            continue
        prefix = name + "." if name else ""
        books = vq._books()
        names = [prefix + "codebook_module."] if len(books) == 1 else \
            [f"{prefix}codebook_modules.{n}." for n in range(len(books))]
        for ours, theirs in _BOOK_KEYS.items():
            values = [state.pop(p + ours) for p in names]
            state[prefix + "_codebook." + theirs] = values[0] if ours == "initialised" else torch.stack(values)
        for p in names:
            state.pop(p + "revived")
        for key in [k for k in state if k.startswith(prefix + "vq_bridge.")]:
            state[prefix + "_codebook." + key[len(prefix):]] = state.pop(key)
        if vq.affine is not None:
            for a in _AFFINE:
                value = state.pop(prefix + "affine." + a)
                flag = state.pop(prefix + "affine." + a + "_needs_init")
                if a.startswith("batch") and bool(flag):
                    continue  # vector-quantize-pytorch holds None there until the first forward
                state[prefix + "_codebook." + a] = value
                if a.startswith("codebook"):
                    state[prefix + "_codebook." + a + "_needs_init"] = flag
    return state
