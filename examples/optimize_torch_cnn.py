"""Optimize a PyTorch CNN with refold, end to end.

    python examples/optimize_torch_cnn.py

Captures the module with torch.export, raises ATen ops to refold's core ops, runs CSE and DCE with
each pass checked numerically against the graph before it, and gives back a GraphModule that
matches the original, trains, and exports again.
"""
from __future__ import annotations

import torch

import refold


class ConvBlock(torch.nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False), torch.nn.BatchNorm2d(cout),
                         torch.nn.ReLU())


class SmallCNN(torch.nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = ConvBlock(3, 16)
        self.stage = torch.nn.Sequential(ConvBlock(16, 32, 2), ConvBlock(32, 32))
        self.head = torch.nn.Linear(32, classes)

    def forward(self, x):
        y = self.stage(self.stem(x))
        return self.head(y.mean((2, 3)))


def main() -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(4, 3, 32, 32)
    gm, report = refold.optimize(model, (x,), passes=["raise-to-core", "cse", "dce"])
    print(report.format())
    diff = (gm(x) - model(x)).abs().max().item()
    print(f"max |refold - eager| = {diff:.2e}")
    assert diff <= 1e-5
    # the result is an ordinary trainable module
    opt = torch.optim.SGD(gm.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(gm(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    print(f"one SGD step: loss {loss.item():.4f}; parameters: {sum(p.numel() for p in gm.parameters())}")
    torch.export.export(gm, (x,))
    print("torch.export of the result: ok")


if __name__ == "__main__":
    main()
