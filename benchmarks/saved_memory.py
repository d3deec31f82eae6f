"""Activation memory of one training step: the bytes autograd keeps for the backward.

    python benchmarks/saved_memory.py            # the README's table (cpu backend, ~10 s)

Counts every distinct storage a saved-tensor hook sees during the forward
(weights excluded: they are kept whatever happens), so it measures what the
backend chooses to save -- uint8 spikes for spike-fed GEMMs, ``h[t]`` or the
input with ``recompute`` -- independently of the allocator. Runs on the CPU;
the cuda backend saves the same tensors (in fp32 and tf32; under bf16 autocast the
GEMMs keep their own bf16 copies).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import snncc
from snncc import nn as snn


def saved_mib(model: nn.Module, x: torch.Tensor, **options) -> float:
    """MiB of activations autograd keeps for one forward of ``model`` compiled with ``options``."""
    module = snncc.compile(model, x[:2], backend="cpu", **options).to_torch()
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(b for ptr, b in seen.items() if ptr not in weights) / 2**20


def mlp(neuron: type) -> nn.Module:
    return nn.Sequential(
        nn.Linear(256, 1024),
        neuron(),
        nn.Linear(1024, 1024),
        neuron(),
        nn.Linear(1024, 10),
        neuron(),
    )


class SynapticNet(nn.Module):
    """snnTorch Linear 256-1024 + Synaptic, Linear 1024-10 + Leaky, stepped over T."""

    def __init__(self) -> None:
        import snntorch

        super().__init__()
        self.fc1, self.syn = nn.Linear(256, 1024), snntorch.Synaptic(alpha=0.8, beta=0.9)
        self.fc2, self.lif = nn.Linear(1024, 10), snntorch.Leaky(beta=0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        syn, mem = self.syn.init_synaptic()
        mem2 = self.lif.init_leaky()
        out = []
        for t in range(x.shape[0]):
            s, syn, mem = self.syn(self.fc1(x[t]), syn, mem)
            s2, mem2 = self.lif(self.fc2(s), mem2)
            out.append(s2)
        return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-T", type=int, default=64)
    parser.add_argument("-B", type=int, default=32)
    args = parser.parse_args()
    x = torch.rand(args.T, args.B, 256)
    models = {
        "Linear 256-1024-1024-10, LIF after each": lambda: mlp(lambda: snn.LIF(tau=2.0)),
        "the same with PLIF": lambda: mlp(lambda: snn.ParametricLIF(init_tau=2.0)),
        "snnTorch Linear 256-1024 + Synaptic, Linear 1024-10 + Leaky": SynapticNet,
    }
    print(f"T={args.T}, B={args.B}: MiB of activations saved for the backward")
    print("| model | default | `recompute=True` |\n|---|---|---|")
    for name, build in models.items():
        model = build().train()
        print(f"| {name} | {saved_mib(model, x):.1f} | {saved_mib(model, x, recompute=True):.1f} |")


if __name__ == "__main__":
    main()
