"""The impuTMAE multimodal masked autoencoder (paper Section 3, Table 1): the model only.

The method and its decisions: docs/design.md, ``imputmae.model``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imputmae.mae_config import MAEConfig
from imputmae.modalities import MODALITIES, active
from imputmae.layers import (IMAGENET_MEAN, IMAGENET_STD, Block, WSIHead, patches_channel_first, patchify_image,
                             random_masking, sincos_1d, sincos_2d, take_rows, unpatchify_image)


__all__ = ["MODALITIES", "MAEConfig", "MultimodalMAE", "Encoder"]

log = logging.getLogger(__name__)



def _positions(cfg: MAEConfig, m: str, dim: int) -> Tensor:
    """[1, 1 + N_m, dim] float32, a zero row for the CLS token first."""
    n = cfg.n_patches(m)
    pe = sincos_2d(dim, cfg.grid(m)) if cfg.is_image(m) else sincos_1d(dim, torch.arange(n))
    return torch.cat([torch.zeros(1, dim, dtype=pe.dtype), pe]).float()[None]


class Encoder(nn.Module):
    """One modality's encoder: patch embedding, positions, CLS, ``blocks``, final norm."""

    def __init__(self, cfg: MAEConfig, m: str):
        super().__init__()
        D, p = cfg.hidden_size, cfg.patch(m)
        self.proj = nn.Conv2d(3, D, p, stride=p) if cfg.is_image(m) else nn.Conv1d(1, D, p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.register_buffer("pos_embed", _positions(cfg, m, D))
        depth = cfg.layers[m]
        self.blocks = nn.ModuleList(Block(D, cfg.num_heads, cfg.intermediate_size, cfg.norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)

    def embed(self, x: Tensor) -> Tensor:
        """[B, L] or [B, 3, H, W] -> patch tokens with positions [B, N, D]."""
        x = self.proj(x if x.dim() == 4 else x[:, None])
        return x.flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]

    def patches(self, x: Tensor) -> Tensor:
        """Model input -> its patches [B, N, P_in] in the patch kernel's layout: WSI [B, 3, H, W] -> channel-first
        [B, N, 3*p*p] (a copy), omics [B, L] -> [B, N, p] (a view when x is contiguous)."""
        p = self.proj.kernel_size[0]
        return patches_channel_first(x, p) if x.dim() == 4 else x.reshape(x.shape[0], -1, p)

    def embed_visible(self, patches: Tensor, ids_keep: Tensor) -> Tensor:
        """Tokens of the kept patches only: patches [B, N, P_in] (:meth:`patches` of x), ids_keep [B, K] ->
        ``embed(x)`` at the kept patches [B, K, D].

        The patch convolution has kernel = stride, so it is one linear map on each patch's pixels (its kernel
        flattened to [D, P_in]); applying it to the K kept patches skips the masked ones' forward and
        weight-gradient work. Same parameters, same numbers (tested against the convolution)."""
        patches = take_rows(patches, ids_keep)
        w = self.proj.weight
        pos = self.pos_embed[0, 1:].index_select(0, ids_keep.flatten()).view(*ids_keep.shape, -1)
        return F.linear(patches, w.reshape(w.shape[0], -1), self.proj.bias) + pos

    def forward(self, tokens: Tensor, valid: Tensor | None) -> Tensor:
        """tokens: [B, K, D] kept tokens; valid: [B] bool (False: padding only) or None -> latent [B, 1 + K, D]."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        attn_mask = None
        if valid is not None and tokens.shape[1] and not bool(valid.all()):
            keys = torch.cat([valid.new_ones(valid.shape[0], 1), valid[:, None].expand(-1, tokens.shape[1])], dim=1)
            attn_mask = keys[:, None, None, :]
        for blk in self.blocks:
            x = blk(x, attn_mask)
        return self.norm(x)


# ----------------------------------------------------------------------------------------------------------------
# the model


class MultimodalMAE(nn.Module):
    """Modality-specific encoders + a multimodal decoder; see the module docstring."""

    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        self.modalities = cfg.modalities
        D, Dd = cfg.hidden_size, cfg.decoder_hidden_size
        self.encoders = nn.ModuleDict({m: Encoder(cfg, m) for m in self.modalities})
        self.decoder_embed = nn.ModuleDict({m: nn.Linear(D, Dd) for m in self.modalities})
        self.mask_tokens = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, Dd)) for m in self.modalities})
        for m in self.modalities:
            self.register_buffer(f"decoder_pos_{m}", _positions(cfg, m, Dd))
        self.modality_embed = nn.Parameter(torch.zeros(len(self.modalities), Dd))
        self.decoder_blocks = nn.ModuleList(
            Block(Dd, cfg.decoder_heads, cfg.decoder_intermediate_size, cfg.norm_eps)
            for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(Dd, eps=cfg.norm_eps)
        self.heads = nn.ModuleDict({m: WSIHead(Dd, cfg.patch(m)) if cfg.is_image(m) else nn.Linear(Dd, cfg.patch(m))
                                    for m in self.modalities})
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for m in cfg.lengths:   # 1 where a patch element is a real feature, 0 padding: [N_m, P_m]
            valid = torch.arange(cfg.input_len(m)) < cfg.lengths[m]
            self.register_buffer(f"element_weight_{m}", valid.float().view(cfg.n_patches(m), -1), persistent=False)
        self.apply(self._init_weights)
        for m in self.modalities:
            w = self.encoders[m].proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))   # like a linear layer (MAE)
            nn.init.normal_(self.encoders[m].cls_token, std=0.02)
            nn.init.normal_(self.mask_tokens[m], std=0.02)
        nn.init.normal_(self.modality_embed, std=0.02)
        # Small prediction heads, omics starting at 0.5 (quantile-normalised features are uniform on [0, 1]): the
        # first predictions sit near the targets' mean instead of thousands of Adam steps (of size lr) away.
        for m in self.modalities:
            w = self.heads[m].deconv.weight if self.cfg.is_image(m) else self.heads[m].weight
            nn.init.normal_(w, std=0.02)
            if not self.cfg.is_image(m):
                nn.init.constant_(self.heads[m].bias, 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # -- inputs and targets ------------------------------------------------------------------------------------

    def _input(self, batch: Mapping[str, Tensor], m: str) -> Tensor:
        """The modality's model input: omics padded to whole patches [B, L_pad]; WSI normalised [B, 3, H, W]."""
        x = batch[m].float()
        if self.cfg.is_image(m):
            return (x - self.pixel_mean).div_(self.pixel_std)   # in place on the new tensor: one image less
        pad = self.cfg.input_len(m) - x.shape[1]
        if pad < 0:
            raise ValueError(f"{m}: got {x.shape[1]} features, the model expects at most {self.cfg.input_len(m)}")
        return F.pad(x, (0, pad)) if pad else x

    def patchify(self, m: str, x: Tensor) -> Tensor:
        """Model input (see :meth:`_input`) -> patches [B, N_m, P_m]."""
        if self.cfg.is_image(m):
            return patchify_image(x, self.cfg.patch(m))
        return x.view(x.shape[0], self.cfg.n_patches(m), self.cfg.patch(m))

    def unpatchify(self, m: str, patches: Tensor) -> Tensor:
        """Patches [B, N_m, P_m] -> input space: omics [B, L_pad] in [0, 1]; WSI [B, 3, H, W] in [0, 1]."""
        if self.cfg.is_image(m):
            img = unpatchify_image(patches, self.cfg.patch(m)) * self.pixel_std + self.pixel_mean
            return img.clamp(0, 1)
        return (patches.reshape(patches.shape[0], -1) * self.element_weight(m).flatten()).clamp(0, 1)

    def element_weight(self, m: str) -> Tensor:
        """[N_m, P_m]: 1 for real input elements, 0 for omics padding."""
        if self.cfg.is_image(m):
            return self.pixel_std.new_ones(self.cfg.n_patches(m), self.cfg.patch_dim(m))
        return getattr(self, f"element_weight_{m}")

    def _available(self, batch: Mapping[str, Tensor], m: str, B: int, device: torch.device) -> Tensor:
        if m not in batch:
            return torch.zeros(B, dtype=torch.bool, device=device)
        if "available" not in batch:
            return torch.ones(B, dtype=torch.bool, device=device)
        return batch["available"][:, active().index(m)].to(device=device, dtype=torch.bool)

    def _batch_size(self, batch: Mapping[str, Tensor]) -> tuple[int, torch.device]:
        for m in (*self.modalities, "available"):
            if m in batch:
                return batch[m].shape[0], batch[m].device
        raise ValueError(f"batch has none of {self.modalities}")

    # -- encoder / decoder / loss --------------------------------------------------------------------------------

    def forward_encoder(self, batch: Mapping[str, Tensor], mask_ratio: float,
                        noise: Mapping[str, Tensor] | None = None) -> dict[str, dict[str, Tensor]]:
        """Per modality: ``latent`` [B, 1 + K, D], ``mask`` [B, N] (1 = masked; all 1 where missing or hidden),
        ``ids_restore`` [B, N], ``valid`` [B] bool (seen by the encoder), ``present`` [B] bool (has a target),
        ``x`` the model input (zeros where absent), ``patches`` x cut into patches [B, N, P] (WSI channel-first, see
        :meth:`Encoder.patches`; the training loss's targets, so that the image is cut once).

        An optional ``batch["hidden"]`` [B, M] bool hides present modalities from the encoder (fully masked, like a
        missing one) while keeping them as targets: modality dropout, which trains the imputation path."""
        B, device = self._batch_size(batch)
        out = {}
        for m in self.modalities:
            N = self.cfg.n_patches(m)
            present = self._available(batch, m, B, device)
            valid = present
            if "hidden" in batch:
                valid = present & ~batch["hidden"][:, active().index(m)].to(device=device, dtype=torch.bool)
            if m in batch:
                x = self._input(batch, m)
            else:
                T = self.cfg.tile_size
                shape = (B, 3, T, T) if self.cfg.is_image(m) else (B, self.cfg.input_len(m))
                x = torch.zeros(shape, device=device)
            # nobody has the modality: the encoder sees only its CLS (no tokens at all)
            len_keep = int(N * (1 - mask_ratio)) if bool(valid.any()) else 0
            nz = noise[m] if noise is not None and m in noise else torch.rand(B, N, device=device)
            ids_keep, mask, ids_restore = random_masking(nz.to(device), len_keep)
            mask = torch.where(valid[:, None], mask, torch.ones_like(mask))
            enc = self.encoders[m]
            patches = enc.patches(x)
            if len_keep:
                tokens = enc.embed_visible(patches, ids_keep)
            else:
                tokens = enc.pos_embed.new_zeros(B, 0, self.cfg.hidden_size)
            out[m] = dict(latent=enc(tokens, valid), mask=mask, ids_restore=ids_restore, valid=valid, present=present,
                          x=x, patches=patches)
        return out

    def forward_decoder(self, enc: Mapping[str, Mapping[str, Tensor]],
                        rows: Mapping[str, Tensor] | None = None, channel_first: bool = False) -> dict[str, Tensor]:
        """Concatenate every modality's decoder tokens, run the shared blocks -> patches per modality [B, N_m, P_m].

        With ``rows`` ({m: [B, M_m] patch indices}, e.g. :meth:`loss_rows`) only those patches are predicted:
        preds[m] is [B, M_m, P_m], row j being patch ``rows[m][:, j]``; the last block then computes its queries and
        MLP for those rows only (:meth:`Block.forward_rows`) and the heads see only them. The same numbers for
        those patches as the full pass (tested), less work: the training step's path. ``channel_first``: WSI
        patches in (channel, row, col) order (see :class:`WSIHead`)."""
        seqs, keys = [], []
        for i, m in enumerate(self.modalities):
            e = enc[m]
            h = self.decoder_embed[m](e["latent"])                                  # [B, 1 + K, Dd]
            B, K1, Dd = h.shape
            N = e["ids_restore"].shape[1]
            mask_token = self.mask_tokens[m].to(h.dtype)
            kept = torch.where(e["valid"][:, None, None], h[:, 1:], mask_token)    # missing: only mask tokens
            tok = torch.cat([kept, mask_token.expand(B, N - (K1 - 1), Dd)], dim=1)
            tok = take_rows(tok, e["ids_restore"])
            pos = getattr(self, f"decoder_pos_{m}")
            seqs.append(torch.cat([h[:, :1], tok], dim=1) + pos + self.modality_embed[i])
            keys.append(torch.cat([e["valid"][:, None], e["valid"].new_ones(B, N)], dim=1))  # a missing CLS is ignored
        x = torch.cat(seqs, dim=1)
        key_valid = torch.cat(keys, dim=1)
        attn_mask = None if bool(key_valid.all()) else key_valid[:, None, None, :]
        if rows is None:
            for blk in self.decoder_blocks:
                x = blk(x, attn_mask)
            x = self.decoder_norm(x)
            preds, start = {}, 0
            for m in self.modalities:
                N = enc[m]["ids_restore"].shape[1]
                part = x[:, start + 1:start + 1 + N]
                preds[m] = self._head(m, part, channel_first)
                start += 1 + N
            return preds
        idx, start = [], 0                                                      # rows of the concatenated sequence
        for m in self.modalities:
            idx.append(rows[m] + start + 1)
            start += 1 + enc[m]["ids_restore"].shape[1]
        sel = torch.cat(idx, dim=1)                                             # [B, R]
        for blk in self.decoder_blocks[:-1]:
            x = blk(x, attn_mask)
        if len(self.decoder_blocks):
            x = self.decoder_blocks[-1].forward_rows(x, sel, attn_mask)
        else:
            x = take_rows(x, sel)
        x = self.decoder_norm(x)
        preds = {}
        for m, part in zip(self.modalities, x.split([rows[m].shape[1] for m in self.modalities], dim=1)):
            preds[m] = self._head(m, part, channel_first)
        return preds

    def _head(self, m: str, h: Tensor, channel_first: bool) -> Tensor:
        """Decoder states [B, M, Dd] -> modality m's patches [B, M, P_m] (WSI optionally channel-first)."""
        return self.heads[m](h, channel_first) if self.cfg.is_image(m) else self.heads[m](h)

    def loss_rows(self, enc: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """The patches the loss can count, per modality [B, M_m]: the masked ones (M_m = N_m - K_m, in masking
        order), or all N_m patches when some sample has the modality but hid it from the encoder (modality
        dropout: every patch of it is a target). Every patch with a nonzero loss weight is in the list."""
        out = {}
        for m in self.modalities:
            e = enc[m]
            B, N = e["ids_restore"].shape
            if bool((e["present"] & ~e["valid"]).any()):
                out[m] = torch.arange(N, device=e["ids_restore"].device).expand(B, -1)
            else:
                out[m] = torch.argsort(e["ids_restore"], dim=1)[:, e["latent"].shape[1] - 1:]   # ids_shuffle[:, K:]
        return out

    def reconstruction_error(self, m: str, x: Tensor, pred: Tensor, weight: Tensor, rows: Tensor | None = None,
                             channel_first: bool = False, patches: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Sum of squared errors and number of elements over the patches with ``weight`` [B, N] (1 = counted).

        x: model input; pred: [B, N, P], or [B, M, P] for the patches ``rows`` [B, M] (see :meth:`forward_decoder`;
        ``rows`` must list every patch whose weight is nonzero); ``channel_first``: WSI pred in (channel, row, col)
        order, ``patches`` x already cut that way (optional: saves a copy). Omics padding is never counted.
        """
        if self.cfg.is_image(m):                                                # every element is real
            if channel_first:
                target = patches if patches is not None else patches_channel_first(x, self.cfg.patch(m))
            else:
                target = self.patchify(m, x)
            if rows is not None:
                target, weight = take_rows(target, rows), weight.gather(1, rows)
            sq = F.mse_loss(pred.float(), target, reduction="none")   # [B, N or M, P]; one fused pass
            return (sq.sum(-1) * weight).sum(), weight.sum() * sq.shape[-1]
        target, ew = self.patchify(m, x), self.element_weight(m)               # [B, N, P], [N, P]
        if rows is not None:
            target, weight = take_rows(target, rows), weight.gather(1, rows)
            ew = ew[rows]                                                       # [B, M, P]
        sq = F.mse_loss(pred.float(), target, reduction="none")
        return ((sq * ew).sum(-1) * weight).sum(), (weight * ew.sum(-1)).sum()

    def forward_loss(self, enc: Mapping[str, Mapping[str, Tensor]], preds: Mapping[str, Tensor],
                     rows: Mapping[str, Tensor] | None = None, channel_first: bool = False
                     ) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 1-2: per modality the MSE over the masked patches of samples that have it; summed.

        ``rows``, ``channel_first``: how ``preds`` were computed (see :meth:`forward_decoder`)."""
        losses = {}
        for m in self.modalities:
            e = enc[m]
            sse, n = self.reconstruction_error(m, e["x"], preds[m], e["mask"] * e["present"][:, None],
                                               None if rows is None else rows[m], channel_first,
                                               e.get("patches") if channel_first else None)
            losses[m] = sse / n.clamp_min(1)        # no present sample: 0 (still part of the graph)
        return torch.stack(list(losses.values())).sum(), losses

    def forward(self, batch: Mapping[str, Tensor], mask_ratio: float | None = None,
                noise: Mapping[str, Tensor] | None = None, predict: Literal["all", "masked"] = "all"
                ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """-> (loss, preds {m: [B, N_m, P_m]}, masks {m: [B, N_m]} (1 = masked), losses {m: scalar}).

        ``predict="masked"`` (the training step): the decoder predicts only the patches the loss counts
        (:meth:`loss_rows`), preds[m] is then [B, M_m, P_m], WSI patches in (channel, row, col) order (the
        cheaper layout, see :class:`WSIHead`); the loss and its gradients are the same as with ``"all"`` (tested),
        for less work."""
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        enc = self.forward_encoder(batch, ratio, noise)
        rows = self.loss_rows(enc) if predict == "masked" else None
        channel_first = predict == "masked"
        preds = self.forward_decoder(enc, rows, channel_first=channel_first)
        loss, losses = self.forward_loss(enc, preds, rows, channel_first=channel_first)
        return loss, preds, {m: enc[m]["mask"] for m in self.modalities}, losses

    @torch.no_grad()
    def init_output_bias(self, means: Mapping[str, Tensor]) -> None:
        """Start each prediction head at the training patients' mean input (averaged over patches, padding
        excluded): {m: mean input shaped like one sample, [L] or [3, H, W] in [0, 1]}."""
        for m, mean in means.items():
            if m not in self.modalities:
                continue
            patches = self.patchify(m, self._input({m: mean[None].to(self.pixel_std.device)}, m))[0]   # [N, P]
            ew = self.element_weight(m)
            bias = (patches * ew).sum(0) / ew.sum(0).clamp_min(1)
            (self.heads[m].pixel_bias if self.cfg.is_image(m) else self.heads[m].bias).copy_(bias)

    # -- uses of a trained model ---------------------------------------------------------------------------------

    def _unmasked_noise(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        B, device = self._batch_size(batch)
        return {m: torch.arange(self.cfg.n_patches(m), device=device, dtype=torch.float).expand(B, -1)
                for m in self.modalities}

    def encode(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """CLS embedding of each modality's encoder with no masking: {m: [B, D]}, zero rows where m is absent.

        Deterministic; keeps the graph (fine-tuning trains through it)."""
        enc = self.forward_encoder(batch, 0.0, self._unmasked_noise(batch))
        return {m: enc[m]["latent"][:, 0] * enc[m]["valid"][:, None] for m in self.modalities}

    def view_noise(self, views: int, seed: int, B: int, device: torch.device) -> list[dict[str, Tensor]]:
        """``views`` seeded masking draws, each {m: [B, N_m]} with one row repeated for every sample, so a
        patient's draw does not depend on the batch it is in."""
        gen = torch.Generator().manual_seed(seed)
        draws = [{m: torch.rand(1, self.cfg.n_patches(m), generator=gen) for m in self.modalities} for _ in range(views)]
        return [{m: v.to(device).expand(B, -1) for m, v in d.items()} for d in draws]

    @torch.no_grad()
    def impute(self, batch: Mapping[str, Tensor], views: int = 8, seed: int = 0) -> dict[str, Tensor]:
        """Reconstruct every missing modality from the present ones.

        The present modalities are shown to the encoder as in pretraining: ``mask_ratio`` of their patches masked,
        over ``views`` seeded draws whose reconstructions are averaged (``views=0``: every patch shown once). A
        model pretrained with 50% masking has never seen a whole modality: shown one, its decoder's imputation
        falls back towards the training mean (BENCHMARKS.md, "Demo pretraining": views=0 against views=8). The
        result depends only on the patient's own inputs and ``seed``, not on the rest of the batch.

        Returns {m: tensor shaped like the model input of m} (omics padded to whole patches, WSI [B, 3, H, W], in
        [0, 1]): the batch's own values where m is available, the decoder's reconstruction where it is missing.
        """
        B, device = self._batch_size(batch)
        if views <= 0 or self.cfg.mask_ratio <= 0:
            draws, ratio = [self._unmasked_noise(batch)], 0.0
        else:
            draws, ratio = self.view_noise(views, seed, B, device), self.cfg.mask_ratio
        total: dict[str, Tensor] = {}
        for noise in draws:
            enc = self.forward_encoder(batch, ratio, noise)
            preds = self.forward_decoder(enc)
            for m in self.modalities:
                recon = self.unpatchify(m, preds[m].float())
                total[m] = total[m] + recon if m in total else recon
        valid = {m: self._available(batch, m, B, device) for m in self.modalities}
        out = {}
        for m in self.modalities:
            recon = total[m] / len(draws)
            x = batch[m].float() if m in batch else torch.zeros_like(recon)
            if not self.cfg.is_image(m):
                x = F.pad(x, (0, recon.shape[1] - x.shape[1]))
            shape = (-1,) + (1,) * (recon.dim() - 1)
            out[m] = torch.where(valid[m].view(shape), x, recon)
        return out


