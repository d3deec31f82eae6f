"""snncc's own neuron modules: time-major, stateless between calls, SpikingJelly arithmetic.

Why snncc has its own modules: a model written with them has no hidden
memory (each forward starts from a fresh state, so there is no
``reset_net`` to forget), is time-major like every snncc Program
(``[T, B, ...] -> [T, B, ...]``), and describes itself with ``.spec()``, so
the frontend converts it without guessing. Their maths is
:func:`snncc.neurons.step`, i.e. bit for bit SpikingJelly 2.0's matching
neuron (IFNode, LIFNode, ParametricLIFNode, NonSpikingLIFNode), gradients
included.

Example::

    net = torch.nn.Sequential(torch.nn.Linear(784, 100), snncc.nn.LIF(tau=2.0))
    y = net(x)          # x: [T, B, 784] -> y: [T, B, 100] spikes
"""

from __future__ import annotations

import math

import torch
from torch import nn

from snncc.errors import ShapeError, UnsupportedError
from snncc.ir.neuron import NeuronSpec
from snncc.ir.surrogates import default_alpha
from snncc.neurons import run_sequence

__all__ = ["IF", "LIF", "LI", "ParametricLIF", "SeqToANN"]


class _Neuron(nn.Module):
    """Shared time loop: subclasses define :meth:`spec` and their learnable params."""

    def spec(self) -> NeuronSpec:  # pragma: no cover - abstract
        raise NotImplementedError

    def _params(self) -> dict[str, torch.Tensor]:
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the whole sequence ``x`` [T, B, ...] from a fresh state; return [T, B, ...]."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(
                f"{type(self).__name__} expects a time-major tensor [T, B, ...]; got {shape}"
            )
        out, _ = run_sequence(self.spec(), self._params(), x)
        return out


class _Spiking(_Neuron):
    def __init__(
        self,
        v_threshold: float,
        v_reset: float | None,
        surrogate: str,
        alpha: float | None,
        detach_reset: bool,
    ) -> None:
        super().__init__()
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.surrogate = surrogate
        default = default_alpha(surrogate)  # also rejects unknown names, naming the choices
        self.alpha = default if alpha is None else float(alpha)
        self.detach_reset = bool(detach_reset)

    def _common(self) -> dict:
        return {
            "v_threshold": self.v_threshold,
            "v_reset": self.v_reset,
            "reset": "subtract" if self.v_reset is None else "hard",
            "detach_reset": self.detach_reset,
            "surrogate": self.surrogate,
            "alpha": self.alpha,
            "v_init": 0.0 if self.v_reset is None else self.v_reset,
        }

    def extra_repr(self) -> str:
        return self.spec().summary()


class IF(_Spiking):
    """Integrate-and-fire: ``h = v + x`` (SpikingJelly IFNode).

    ``v_reset=None`` means a soft reset (subtract the threshold); ``alpha=None``
    takes the surrogate's default (4 for sigmoid, 2 for atan).
    """

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate: str = "sigmoid",
        alpha: float | None = 4.0,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(v_threshold, v_reset, surrogate, alpha, detach_reset)

    def spec(self) -> NeuronSpec:
        return NeuronSpec(model="if", charge="sj_if", **self._common())


class LIF(_Spiking):
    """Leaky integrate-and-fire with a fixed ``tau`` (SpikingJelly LIFNode).

    decay_input=True: ``h = v + (x - (v - v_reset)) / tau``;
    decay_input=False: ``h = v - (v - v_reset) / tau + x`` (v_reset 0 for a soft reset).
    """

    def __init__(
        self,
        tau: float = 2.0,
        decay_input: bool = True,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate: str = "sigmoid",
        alpha: float | None = 4.0,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(v_threshold, v_reset, surrogate, alpha, detach_reset)
        if not tau > 1.0:
            raise UnsupportedError(f"LIF tau must be > 1 (SpikingJelly's rule); got {tau}")
        self.tau = float(tau)
        self.decay_input = bool(decay_input)

    def spec(self) -> NeuronSpec:
        charge = "sj_lif_decay_input" if self.decay_input else "sj_lif"
        return NeuronSpec(
            model="lif", charge=charge, tau=self.tau, decay_input=self.decay_input, **self._common()
        )


class ParametricLIF(_Spiking):
    """LIF with a learnable decay ``k = sigmoid(w)`` (SpikingJelly ParametricLIFNode).

    ``w`` is an ``nn.Parameter`` initialised to ``-ln(init_tau - 1)`` so that
    ``1 / sigmoid(w) = init_tau``; k is computed once per forward.
    """

    def __init__(
        self,
        init_tau: float = 2.0,
        decay_input: bool = True,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate: str = "sigmoid",
        alpha: float | None = 4.0,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(v_threshold, v_reset, surrogate, alpha, detach_reset)
        if not init_tau > 1.0:
            raise UnsupportedError(f"ParametricLIF init_tau must be > 1; got {init_tau}")
        self.decay_input = bool(decay_input)
        self.w = nn.Parameter(torch.as_tensor(-math.log(init_tau - 1.0)))

    def _params(self) -> dict[str, torch.Tensor]:
        return {"w": self.w}

    def spec(self) -> NeuronSpec:
        charge = "sj_plif_decay_input" if self.decay_input else "sj_plif"
        return NeuronSpec(
            model="plif",
            charge=charge,
            decay_input=self.decay_input,
            learnable=("w",),
            **self._common(),
        )


class LI(_Neuron):
    """Non-spiking leaky integrator readout: ``v = v + (x - v) / tau``, outputs the membrane.

    Same arithmetic as SpikingJelly's NonSpikingLIFNode (membrane starts at 0).
    """

    def __init__(self, tau: float = 2.0) -> None:
        super().__init__()
        if not tau > 0.0:
            raise UnsupportedError(f"LI tau must be > 0; got {tau}")
        self.tau = float(tau)

    def spec(self) -> NeuronSpec:
        return NeuronSpec(
            model="li",
            charge="snncc_li",
            tau=self.tau,
            v_reset=None,
            reset="none",
            output="membrane",
            v_init=0.0,
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}"


class SeqToANN(nn.Sequential):
    """Stateless layers applied to every time step at once: ``[T, B, ...] -> [T, B, ...]``.

    Conv, BatchNorm and pooling interpret the first dim as the batch, so in a
    time-major model they would read T as the batch. ``SeqToANN(*modules)``
    folds T into the batch (``[T*B, ...]``), runs the modules in order and
    unfolds the result, exactly like SpikingJelly's ``SeqToANNContainer``
    (training-mode BatchNorm statistics therefore run over T*B). Neurons do
    not belong inside: they need the time dim.

    Example::

        net = torch.nn.Sequential(
            snncc.nn.SeqToANN(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8)),
            snncc.nn.LIF(tau=2.0),
        )
        y = net(x)          # x: [T, B, 1, H, W] -> y: [T, B, 8, H, W]
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"SeqToANN expects a time-major tensor [T, B, ...]; got {shape}")
        T, B = x.shape[0], x.shape[1]
        y = super().forward(x.flatten(0, 1))
        return y.reshape(T, B, *y.shape[1:])
