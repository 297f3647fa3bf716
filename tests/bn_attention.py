"""A LeViT-style attention network built from Linear + BatchNorm1d pairs, as a plain torch module
(no refold imports): tokens [B, N, C] go through a Linear, are flattened to [B * N, C'] for a
BatchNorm1d and reshaped back; q, k and v come out of one such pair, split per head. No
LayerNorm anywhere, so the residual stream is prunable too.

    net, x = levit()          # x: [2, 3, 32, 32]
    net(x).shape              # [2, 10]
"""
from __future__ import annotations

import torch
from torch import nn

from yolo import randomize_bn


class LinearNorm(nn.Module):
    """Linear (no bias), then BatchNorm1d over the tokens flattened into the batch (LeViT)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=False)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x):
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class Attention(nn.Module):
    """qkv from one LinearNorm, viewed [B, N, heads, 2 * key_dim + val_dim] and split; a learned
    per-head bias on the scores; Hardswish then a LinearNorm projection."""

    def __init__(self, dim: int, key_dim: int, heads: int, val_dim: int, tokens: int):
        super().__init__()
        self.heads, self.key_dim, self.val_dim = heads, key_dim, val_dim
        self.scale = key_dim ** -0.5
        self.qkv = LinearNorm(dim, heads * (2 * key_dim + val_dim))
        self.attention_biases = nn.Parameter(torch.randn(heads, tokens, tokens) * 0.1)
        self.act = nn.Hardswish()
        self.proj = LinearNorm(heads * val_dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, self.heads, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3)
        attn = (q @ k * self.scale + self.attention_biases).softmax(-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.val_dim)
        return self.proj(self.act(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.ln1, self.act, self.ln2 = LinearNorm(dim, hidden), nn.Hardswish(), LinearNorm(hidden, dim)

    def forward(self, x):
        return self.ln2(self.act(self.ln1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, key_dim: int, heads: int, tokens: int):
        super().__init__()
        self.attn = Attention(dim, key_dim, heads, 2 * key_dim, tokens)
        self.mlp = Mlp(dim, 2 * dim)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class LeViTish(nn.Module):
    """Conv stem (stride 4), blocks at one width, a LinearNorm to the next width, blocks, then a
    BatchNorm1d + Linear head on the mean token."""

    def __init__(self, dims=(32, 48), heads=(2, 3), key_dim: int = 8, depth: int = 2, imgsz: int = 32,
                 classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0] // 2, 3, 2, 1), nn.BatchNorm2d(dims[0] // 2), nn.Hardswish(),
                                  nn.Conv2d(dims[0] // 2, dims[0], 3, 2, 1), nn.BatchNorm2d(dims[0]))
        tokens = (imgsz // 4) ** 2
        self.stage1 = nn.Sequential(*(Block(dims[0], key_dim, heads[0], tokens) for _ in range(depth)))
        self.widen = LinearNorm(dims[0], dims[1])
        self.stage2 = nn.Sequential(*(Block(dims[1], key_dim, heads[1], tokens) for _ in range(depth)))
        self.head_bn, self.head = nn.BatchNorm1d(dims[1]), nn.Linear(dims[1], classes)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = self.stage2(nn.functional.hardswish(self.widen(self.stage1(x))))
        return self.head(self.head_bn(x.mean(1)))


def levit(batch: int = 2, imgsz: int = 32, seed: int = 0) -> tuple[LeViTish, torch.Tensor]:
    """A random LeViT-style net in eval mode (random BatchNorm statistics) and an input."""
    torch.manual_seed(seed)
    net = randomize_bn(LeViTish(imgsz=imgsz), seed)
    return net, torch.randn(batch, 3, imgsz, imgsz)
