"""Building blocks of the masked autoencoder: fixed sine-cosine positions, random masking, per-sample row
gathers, the pre-norm transformer ``Block`` (``F.scaled_dot_product_attention``), and image patch layouts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "sincos_1d", "sincos_2d", "random_masking", "take_rows", "Attention", "Mlp",
           "Block", "WSIHead", "patchify_image", "patches_channel_first", "unpatchify_image"]



IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """Fixed sine-cosine embedding of ``positions`` [N] -> [N, dim] laid out ``[sin | cos]`` (MAE)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid: int) -> Tensor:
    """2D sine-cosine positions for a ``grid`` x ``grid`` patch grid, row-major -> [grid*grid, dim].

    Layout ``[sin_col | cos_col | sin_row | cos_row]``: facebookresearch/mae's (and so vit-mae-base's) order.
    """
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)


def random_masking(noise: Tensor, len_keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample random masking by argsort of noise (MAE).

    Args:
        noise: [B, N] (uniform); the ``len_keep`` smallest values per row are kept.
    Returns:
        ids_keep [B, len_keep], mask [B, N] (1 = masked, 0 = kept), ids_restore [B, N] (unshuffles).
    """
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(noise)
    mask[:, :len_keep] = 0
    return ids_shuffle[:, :len_keep], torch.gather(mask, 1, ids_restore), ids_restore


def take_rows(x: Tensor, rows: Tensor) -> Tensor:
    """Per-sample rows: x [B, N, ...] and rows [B, M] (indices into N) -> [B, M, ...], ``out[b, j] = x[b, rows[b, j]]``.

    ``torch.gather`` along dim 1 with the index expanded over the trailing dims, as one ``index_select`` of whole
    rows of the flattened [B*N, ...] tensor: on CPU several times faster, forward and backward (``index_add``)."""
    B, N = x.shape[:2]
    flat = (rows + N * torch.arange(B, device=rows.device)[:, None]).flatten()
    return x.reshape(B * N, *x.shape[2:]).index_select(0, flat).view(B, rows.shape[1], *x.shape[2:])


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: [B, T, C]; attn_mask: [B, 1, 1, T] bool, True = may be attended to (key padding)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, eps: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=eps), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=eps), Mlp(dim, mlp_hidden)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))

    def forward_rows(self, x: Tensor, rows: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """``block(x)`` at the rows ``rows`` only: x [B, T, C], rows [B, R] (indices into T) -> [B, R, C].

        Exact: keys and values come from every row, queries, the projection and the MLP from the R rows (the
        others' outputs are not computed). Used for the decoder's last block, whose unused rows are dropped."""
        B, T, C = x.shape
        heads = self.attn.heads
        xs = take_rows(x, rows)                                                 # [B, R, C]
        w, b = self.attn.qkv.weight, self.attn.qkv.bias
        kv = F.linear(self.norm1(x), w[C:], b[C:]).view(B, T, 2, heads, C // heads).permute(2, 0, 3, 1, 4)
        q = F.linear(self.norm1(xs), w[:C], b[:C]).view(B, -1, heads, C // heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=attn_mask)
        xs = xs + self.attn.proj(y.transpose(1, 2).reshape(B, -1, C))
        return xs + self.mlp(self.norm2(xs))


class WSIHead(nn.Module):
    """Transposed 2D convolution (kernel = stride = patch) from decoder tokens to pixels, plus a per-pixel bias.

    Equivalent to a linear layer from each token to its patch's ``p*p*3`` pixels (transformers' ``decoder_pred``).
    """

    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.deconv = nn.ConvTranspose2d(dim, 3, patch, stride=patch, bias=False)
        self.pixel_bias = nn.Parameter(torch.zeros(patch * patch * 3))

    def forward(self, x: Tensor, channel_first: bool = False) -> Tensor:
        """x: [B, N, D] (N = g*g, row-major) -> patches [B, N, p*p*3] in (row, col, channel) order, or in
        (channel, row, col) order with ``channel_first`` (the same outputs, permuted: the order of the targets
        the training loss cuts from the image, which is cheaper to produce).

        With stride == kernel the transposed convolution writes each token to its own patch only, so it is one
        linear layer with the kernel laid out as [p*p*3, D]; on CPU that is ~10x faster than
        ``F.conv_transpose2d`` (:meth:`forward_conv`, the same numbers: tested)."""
        w, p = self.deconv.weight, self.patch
        if channel_first:
            return F.linear(x, w.permute(1, 2, 3, 0).reshape(-1, w.shape[0]),
                            self.pixel_bias.view(p, p, 3).permute(2, 0, 1).reshape(-1))
        return F.linear(x, w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]), self.pixel_bias)   # [p*p*3, D]

    def forward_conv(self, x: Tensor) -> Tensor:
        """Reference path through ``nn.ConvTranspose2d`` on the token grid (slower on CPU)."""
        B, N, D = x.shape
        g = math.isqrt(N)
        img = self.deconv(x.transpose(1, 2).reshape(B, D, g, g))
        return patchify_image(img, self.patch) + self.pixel_bias


def patchify_image(img: Tensor, p: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), p*p*C], each patch in (row, col, channel) order (MAE/transformers)."""
    B, C, H, W = img.shape
    x = img.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def patches_channel_first(img: Tensor, p: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), C*p*p], each patch in (channel, row, col) order: the patch convolution's
    kernel layout, and a copy ~2x cheaper on CPU than :func:`patchify_image`'s channel-last order."""
    B, C, H, W = img.shape
    x = img.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify_image(x: Tensor, p: int) -> Tensor:
    """Inverse of :func:`patchify_image` for square images: [B, N, p*p*3] -> [B, 3, H, W]."""
    B, N, _ = x.shape
    g = math.isqrt(N)
    return x.reshape(B, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(B, 3, g * p, g * p)


