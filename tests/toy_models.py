"""Toy models, one per layer type LoRA supports, with example inputs. Each factory gives the same
weights on every call (fixed seed), so a fresh copy can stand in for "the same base model"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D


class LinearNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(8, 16)
        self.lin2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.lin2(torch.relu(self.lin1(x)))


class EmbeddingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8, padding_idx=0)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.emb(x))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(-1))


class Conv2dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.point = nn.Conv2d(6, 5, 1)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.point(torch.relu(self.conv(x))).mean((-1, -2)))


class GPT2Conv1DNet(nn.Module):
    """transformers' Conv1D stores its weight as (in, out): LoRA needs fan_in_fan_out."""

    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(16, 8)
        self.c_proj = Conv1D(4, 16)

    def forward(self, x):
        return self.c_proj(torch.relu(self.c_fc(x)))


@dataclass(frozen=True)
class Toy:
    name: str
    factory: Callable[[], nn.Module]
    targets: list[str]
    make_input: Callable[[int], torch.Tensor]

    def model(self) -> nn.Module:
        torch.manual_seed(0)
        return self.factory().eval()

    def inputs(self, batch: int = 4) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        return self.make_input(batch, g)


TOYS = [
    Toy("linear", LinearNet, ["lin1", "lin2"], lambda b, g: torch.randn(b, 5, 8, generator=g)),
    Toy("embedding", EmbeddingNet, ["emb"], lambda b, g: torch.randint(0, 20, (b, 6), generator=g)),
    Toy("conv1d", Conv1dNet, ["conv"], lambda b, g: torch.randn(b, 3, 10, generator=g)),
    Toy("conv2d", Conv2dNet, ["conv", "point"], lambda b, g: torch.randn(b, 3, 8, 8, generator=g)),
    Toy("gpt2_conv1d", GPT2Conv1DNet, ["c_fc", "c_proj"], lambda b, g: torch.randn(b, 5, 8, generator=g)),
]
