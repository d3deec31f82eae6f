"""snnTorch / Norse model builders shared by the peer-framework test files.

Several test files (equivalence with snnTorch / Norse, the cpu, jax and ONNX
backends) check the same tutorial-style models; defining each model here once
keeps them identical, so a model that passes one file's checks is the very
model the others check. A plain module, not a test file: pytest's rootdir
import puts ``tests/`` on ``sys.path``, so ``from peer_models import ...``
works from every test file.

Builders return freshly initialised modules; each test randomises them with
its own seed and gain (see :func:`randomise`), as it did before they moved
here.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

# snnTorch and Norse are imported inside the builders: a test file for one framework
# imports this module (after its own ``pytest.importorskip``) without needing the other.


@functools.cache
def norse_lif_params() -> Any:
    """Norse ``LIFParameters`` that make the default-initialised layers fire at moderate rates."""
    from norse.torch.functional.lif import LIFParameters

    return LIFParameters(
        tau_syn_inv=torch.as_tensor(300.0),
        tau_mem_inv=torch.as_tensor(250.0),
        v_leak=torch.as_tensor(0.05),
        v_th=torch.as_tensor(0.4),
        v_reset=torch.as_tensor(-0.1),
    )


def randomise(model: nn.Module, seed: int, gain: float = 2.0) -> nn.Module:
    """Seeded weights large enough that neurons fire at moderate rates; returns ``model``.

    Every parameter named ``*weight(s)`` gets N(0, 1) * gain / sqrt(fan_in) (Norse's
    ``recurrent_weights`` with a zero diagonal: autapses=False, as Norse initialises
    it), every ``*bias`` N(0, 0.3^2), drawn in parameter order from one generator.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("weight") or name.endswith("weights"):
            fan_in = p[0].numel()
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * gain / fan_in**0.5)
                if name.endswith("recurrent_weights"):
                    p.fill_diagonal_(0.0)
        elif name.endswith("bias"):
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


# ---------------------------------------------------------------- eager runs of the peers
def norse_per_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Norse cell as its users step it: state = None; for t: y[t], state = model(x[t], state)."""
    state, out = None, []
    for xt in x:
        y, state = model(xt, state)
        out.append(y)
    return torch.stack(out)


def norse_sequence(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Norse sequence module (LIF, SequentialState, ...): its output, without the state."""
    return model(x)[0]


def snntorch_step_run(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """snnTorch per-step style: reset, call once per step, stack each returned value."""
    from snntorch import utils

    utils.reset(net)
    outs = []
    for xt in x:
        y = net(xt)
        outs.append(y if isinstance(y, tuple) else (y,))
    utils.reset(net)
    return tuple(torch.stack(v) for v in zip(*outs))


def snntorch_convnet(clamp_edges: bool = False) -> nn.Sequential:
    """The snnTorch tutorial CSNN (per-step, ``init_hidden``): learnable per-channel beta and
    threshold (broadcast over H, W), learnable graded spikes; input [B, 1, 8, 8].

    ``clamp_edges``: per-channel beta 0.6, 0.85, 1.0, 1.1 (on and beyond the [0, 1]
    clamp's edges) and ``reset_delay=False``, instead of beta 0.85 everywhere with
    snnTorch's default reset delay.
    """
    import snntorch as snn

    if clamp_edges:
        first = {"beta": torch.tensor([0.6, 0.85, 1.0, 1.1]).reshape(4, 1, 1), "reset_delay": False}
    else:
        first = {"beta": torch.full((4, 1, 1), 0.85)}
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.MaxPool2d(2),
        snn.Leaky(
            threshold=torch.full((4, 1, 1), 0.9),
            learn_beta=True,
            learn_threshold=True,
            init_hidden=True,
            **first,
        ),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
        snn.Leaky(
            beta=0.7,
            init_hidden=True,
            output=True,
            graded_spikes_factor=0.5,
            learn_graded_spikes_factor=True,
        ),
    )


class NorseBoxLearnable(nn.Module):
    """LIFBoxCell (reset_subtract, own dt) and an LIFCell whose tau_mem_inv is an nn.Parameter.

    Per-step (Norse cells): ``y, state = model(x[t], state)``.
    """

    def __init__(self) -> None:
        import norse.torch as norse
        from norse.torch.functional.lif_box import LIFBoxParameters
        from norse.torch.functional.reset import reset_subtract

        super().__init__()
        self.tau = nn.Parameter(torch.tensor(220.0))
        self.seq = norse.SequentialState(
            nn.Linear(6, 8),
            norse.LIFBoxCell(
                LIFBoxParameters(
                    tau_mem_inv=torch.as_tensor(400.0),
                    v_th=torch.as_tensor(0.3),
                    reset_method=reset_subtract,
                ),
                dt=0.0013,
            ),
            nn.Linear(8, 5),
            norse.LIFCell(norse_lif_params()._replace(tau_mem_inv=self.tau), dt=0.0007),
        )

    def forward(self, x: torch.Tensor, state=None):
        return self.seq(x, state)


def norse_cell_stack() -> nn.Module:
    """Per-step Norse cells: Linear -> LIFCell -> Linear -> LICell, input [B, 6]."""
    import norse.torch as norse

    return norse.SequentialState(
        nn.Linear(6, 10),
        norse.LIFCell(norse_lif_params()),
        nn.Linear(10, 4),
        norse.LICell(dt=0.002),
    )


def norse_sequence_stack() -> nn.Module:
    """Multi-step Norse modules: Linear -> LIF -> Linear -> LI, fed [T, B, 6] at once."""
    import norse.torch as norse

    return norse.SequentialState(
        nn.Linear(6, 10), norse.LIF(norse_lif_params()), nn.Linear(10, 4), norse.LI(dt=0.002)
    )
