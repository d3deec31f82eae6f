"""The frontend: structure of traced graphs (ops, shapes, params, neuron specs) and its errors.

Numerical agreement with SpikingJelly is tested in test_equivalence_spikingjelly.py;
here each test checks what ``trace`` builds, and that every unsupported model
fails with one message naming the module path, its type and the supported list.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import snncc
import snncc.nn as snn
from snncc.errors import ShapeError, UnsupportedError
from snncc.frontend import SUPPORTED, trace
from snncc.ir.neuron import NeuronSpec

sj = pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: E402


def ops(g) -> list[str]:
    return [g.op(n) for n in g.topo_order()]


def by_op(g, op: str) -> list[dict]:
    return [g.node(n) for n in g.iter_ops(op)]


def spec_of(d: dict) -> NeuronSpec:
    return NeuronSpec.from_dict(d["attrs"]["neuron"])


def mlp(mode: str) -> nn.Module:
    net = nn.Sequential(
        layer.Linear(8, 16),
        neuron.LIFNode(
            tau=3.0, decay_input=False, v_reset=None, surrogate_function=surrogate.ATan()
        ),
        layer.Linear(16, 4, bias=False),
        neuron.IFNode(v_threshold=0.5, v_reset=0.25, detach_reset=True),
    )
    functional.set_step_mode(net, mode)
    return net


def convnet(mode: str) -> nn.Module:
    net = nn.Sequential(
        layer.Conv2d(2, 4, 3, padding=1, bias=False),
        layer.BatchNorm2d(4),
        neuron.ParametricLIFNode(init_tau=3.0),
        layer.MaxPool2d(2, 2),
        layer.AvgPool2d(2),
        layer.Flatten(),
        layer.Dropout(0.3),
        layer.Linear(4 * 2 * 2, 20),
        neuron.LIFNode(),
        layer.VotingLayer(10),
    )
    functional.set_step_mode(net, mode)
    return net


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("mode", ["m", "s"])
def test_mlp_structure(mode: str) -> None:
    net = mlp(mode)
    g = trace(net, torch.rand(5, 3, 8))
    assert ops(g) == ["input", "linear", "neuron", "linear", "neuron", "output"]
    assert g.meta["step_mode"] == mode
    assert g.meta["source"] == "spikingjelly"
    shapes = [g.node(n)["shape"] for n in g.topo_order()]
    assert shapes == [["B", 8], ["B", 16], ["B", 16], ["B", 4], ["B", 4], ["B", 4]]
    names = [g.node(n)["name"] for n in g.topo_order()][1:-1]
    assert names == ["0", "1", "2", "3"]
    lin0, lin1 = by_op(g, "linear")
    assert lin0["params"] == {"weight": "0.weight", "bias": "0.bias"}
    assert lin1["params"] == {"weight": "2.weight"}
    sd = net.state_dict()
    assert set(g.params) == {"0.weight", "0.bias", "2.weight"}
    for k, v in g.params.items():
        np.testing.assert_array_equal(v, sd[k].numpy())

    lif, ifn = (spec_of(d) for d in by_op(g, "neuron"))
    assert lif.model == "lif" and lif.charge == "sj_lif" and lif.tau == 3.0
    assert not lif.decay_input
    assert lif.reset == "subtract" and lif.v_reset is None and lif.v_init == 0.0
    assert (lif.surrogate, lif.alpha) == ("atan", 2.0)
    assert ifn.model == "if" and ifn.charge == "sj_if" and ifn.tau is None
    assert ifn.v_threshold == 0.5 and ifn.reset == "hard" and ifn.v_reset == 0.25
    assert ifn.v_init == 0.25 and ifn.detach_reset
    assert (ifn.surrogate, ifn.alpha) == ("sigmoid", 4.0)
    assert ifn.fire_cmp == ">=" and ifn.fire_from == "updated" and ifn.output == "spike"


def test_params_are_copies() -> None:
    """Graph.params must not alias the model's tensors (later training would change the IR)."""
    net = mlp("m")
    g = trace(net, torch.rand(2, 1, 8))
    before = g.params["0.weight"].copy()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    np.testing.assert_array_equal(g.params["0.weight"], before)


@pytest.mark.parametrize("mode", ["m", "s"])
def test_convnet_structure(mode: str) -> None:
    net = convnet(mode).eval()
    g = trace(net, torch.rand(4, 2, 2, 8, 8))
    assert ops(g) == [
        "input", "conv2d", "batchnorm", "neuron", "maxpool2d", "avgpool2d",
        "flatten", "dropout", "linear", "neuron", "voting", "output",
    ]  # fmt: skip
    shapes = {g.node(n)["name"]: g.node(n)["shape"] for n in g.topo_order()}
    assert shapes["0"] == ["B", 4, 8, 8]
    assert shapes["3"] == ["B", 4, 4, 4]
    assert shapes["4"] == ["B", 4, 2, 2]
    assert shapes["5"] == ["B", 16]
    assert shapes["9"] == ["B", 2]
    (conv,) = by_op(g, "conv2d")
    assert conv["attrs"] == {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    assert conv["params"] == {"weight": "0.weight"}
    (bn,) = by_op(g, "batchnorm")
    assert bn["params"] == {
        "running_mean": "1.running_mean",
        "running_var": "1.running_var",
        "weight": "1.weight",
        "bias": "1.bias",
    }
    assert bn["attrs"] == {
        "eps": 1e-5,
        "momentum": 0.1,
        "training": False,
        "stats": "sequence" if mode == "m" else "step",
    }
    (mp,) = by_op(g, "maxpool2d")
    assert mp["attrs"]["kernel_size"] == [2, 2] and mp["attrs"]["stride"] == [2, 2]
    (ap,) = by_op(g, "avgpool2d")
    assert ap["attrs"]["stride"] == [2, 2] and ap["attrs"]["count_include_pad"] is True
    (fl,) = by_op(g, "flatten")
    assert fl["attrs"] == {"start_dim": 1, "end_dim": 3}
    (do,) = by_op(g, "dropout")
    # SpikingJelly keeps its mask; an eval-mode model's dropout is a no-op drop_noops removes
    assert do["attrs"] == {"p": 0.3, "shared_over_time": True, "training": False}
    (vote,) = by_op(g, "voting")
    assert vote["attrs"] == {"voting_size": 10}
    plif = by_op(g, "neuron")[0]
    assert plif["params"] == {"w": "2.w"}
    s = spec_of(plif)
    assert s.model == "plif" and s.charge == "sj_plif_decay_input" and s.learnable == ("w",)
    np.testing.assert_allclose(g.params["2.w"], -np.log(2.0), rtol=1e-6)
    assert "1.num_batches_tracked" not in g.params


def test_batchnorm_training_flag_and_torch_dropout() -> None:
    net = nn.Sequential(
        layer.SeqToANNContainer(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Dropout(0.2)),
        neuron.IFNode(step_mode="m"),
        layer.MultiStepContainer(nn.BatchNorm1d(5), layer.Dropout(0.1)),
    ).train()
    g = trace(net, torch.rand(3, 4, 6))
    assert ops(g) == [
        "input", "linear", "batchnorm", "dropout", "neuron", "batchnorm", "dropout", "output",
    ]  # fmt: skip
    bn0, bn1 = by_op(g, "batchnorm")
    assert bn0["name"] == "0.1" and bn0["params"]["running_mean"] == "0.1.running_mean"
    assert bn0["attrs"]["training"] is True and bn0["attrs"]["stats"] == "sequence"
    assert bn1["attrs"]["stats"] == "step"  # MultiStepContainer runs it once per step
    d0, d1 = by_op(g, "dropout")
    # torch: a fresh mask per call; SpikingJelly: a memory mask; both run in training mode
    assert d0["attrs"] == {"p": 0.2, "shared_over_time": False, "training": True}
    assert d1["attrs"] == {"p": 0.1, "shared_over_time": True, "training": True}


def test_layer_dropout_inside_seq_to_ann_is_not_shared() -> None:
    net = nn.Sequential(layer.SeqToANNContainer(layer.Dropout(0.5)), neuron.IFNode(step_mode="m"))
    g = trace(net, torch.rand(3, 2, 4))
    (d,) = by_op(g, "dropout")
    assert d["attrs"]["shared_over_time"] is False


def test_trace_leaves_model_untouched() -> None:
    """Training mode, BatchNorm running stats, SpikingJelly state and the RNG stream are kept."""
    net = nn.Sequential(
        layer.Linear(6, 5, step_mode="m"),
        layer.BatchNorm1d(5, step_mode="m"),
        layer.Dropout(0.5, step_mode="m"),
        neuron.LIFNode(step_mode="m"),
    ).train()
    stats = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(0)
    expected_rand = torch.rand(3)
    torch.manual_seed(0)
    trace(net, torch.rand(4, 3, 6) + 5.0)
    torch.manual_seed(0)  # the trace must not have consumed or reseeded the global stream...
    got = torch.rand(3)
    assert torch.equal(got, expected_rand)
    assert net.training and all(m.training for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, stats[k]), k
    assert isinstance(net[3].v, float) and net[3].v == 0.0  # reset state
    assert net[2].mask is None


def test_trace_leaves_no_trace_values_on_the_model() -> None:
    """What a model's own forward stores on itself while it is traced (``self.last = s``,
    ``self.record.append(s)``) runs on proxies and fake tensors; none of them may stay on the
    user's model, and what it held before is kept."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 5)
            self.lif = neuron.LIFNode(step_mode="m")
            self.last = "before"
            self.record: list = [1]
            self.by_name: dict = {"kept": 2}

        def forward(self, x):
            s = self.lif(self.fc(x))
            self.last = s
            self.first_seen = s
            self.record.append(s)
            self.by_name["spikes"] = s
            return s

    net = Net().eval()
    record, by_name = net.record, net.by_name
    trace(net, torch.rand(3, 2, 6))
    assert net.last == "before" and not hasattr(net, "first_seen")
    assert net.record is record and record == [1]
    assert net.by_name is by_name and by_name == {"kept": 2}
    x = torch.rand(3, 2, 6)
    assert torch.equal(net(x), net.last)  # the model itself still runs as before


def test_rng_stream_not_advanced() -> None:
    net = nn.Sequential(layer.Dropout(0.5, step_mode="m"), neuron.IFNode(step_mode="m")).train()
    torch.manual_seed(3)
    trace(net, torch.rand(2, 2, 4))
    after_trace = torch.rand(4)
    torch.manual_seed(3)
    torch.rand(2, 2, 4)  # what the test itself drew for the example input
    assert torch.equal(after_trace, torch.rand(4))


def test_snncc_nn_structure() -> None:
    net = nn.Sequential(
        nn.Linear(8, 16),
        snn.LIF(tau=4.0, decay_input=False),
        nn.Linear(16, 12),
        snn.ParametricLIF(init_tau=2.0, v_reset=None, surrogate="atan", alpha=None),
        nn.Linear(12, 3),
        snn.LI(tau=5.0),
    )
    g = trace(net, torch.rand(6, 2, 8))
    assert ops(g) == [
        "input", "linear", "neuron", "linear", "neuron", "linear", "neuron", "output",
    ]  # fmt: skip
    assert g.meta["step_mode"] == "m" and g.meta["source"] == "snncc"
    lif, plif, li = by_op(g, "neuron")
    assert spec_of(lif) == net[1].spec()
    assert spec_of(plif) == net[3].spec()
    assert spec_of(li) == net[5].spec()
    assert plif["params"] == {"w": "3.w"} and lif["params"] == {}
    assert li["shape"] == ["B", 3]
    assert set(g.params) == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "3.w",
        "4.weight",
        "4.bias",
    }


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.sn = snn.IF()
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sn(self.fc(x))
        y = torch.add(s, x) * 2.0
        y = torch.cat([y / 4, s * y], dim=2)
        T, B = y.shape[0], y.size(1)
        z = self.fc2(y).view(T, B, 2, 2).flatten(2)
        return z, s


def test_functions_and_multiple_outputs() -> None:
    g = trace(Residual(), torch.rand(3, 2, 6))
    assert ops(g) == [
        "input", "linear", "neuron", "add", "scale", "scale", "mul", "cat", "linear",
        "reshape", "flatten", "output", "output",
    ]  # fmt: skip
    scales = by_op(g, "scale")
    assert [s["attrs"] for s in scales] == [
        {"op": "mul", "value": 2.0},
        {"op": "div", "value": 4.0},
    ]
    (cat,) = by_op(g, "cat")
    assert cat["attrs"] == {"dim": 1} and cat["shape"] == ["B", 12]
    (rs,) = by_op(g, "reshape")
    assert rs["attrs"] == {"shape": [-1, 2, 2]} and rs["shape"] == ["B", 2, 2]
    (fl,) = by_op(g, "flatten")
    assert fl["attrs"] == {"start_dim": 1, "end_dim": 2}
    assert len(g.meta["outputs"]) == 2
    assert [g.node(o)["attrs"]["index"] for o in g.meta["outputs"]] == [0, 1]


def test_pure_torch_model_is_single_step() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d((None, 1)))
    g = trace(net.eval(), torch.rand(4, 2, 1, 6, 6))
    assert g.meta["step_mode"] == "s" and g.meta["source"] == "torch"
    (ap,) = by_op(g, "adaptive_avgpool2d")
    assert ap["attrs"] == {"output_size": [4, 1]}  # None resolved from the recorded shape
    (bn,) = by_op(g, "batchnorm")
    assert bn["attrs"]["stats"] == "step"


def test_conv_padding_forms() -> None:
    net = nn.Sequential(
        layer.Conv1d(2, 3, 5, padding="same", dilation=2), neuron.IFNode(), layer.Conv1d(3, 3, 3)
    )
    g = trace(net, torch.rand(2, 1, 2, 9))
    c0, c1 = by_op(g, "conv1d")
    assert c0["attrs"]["padding"] == [4] and c0["attrs"]["dilation"] == [2]
    assert c1["attrs"]["padding"] == [0] and c1["shape"] == ["B", 3, 7]


def test_digits_example_traces() -> None:
    from snncc.examples import digits

    g = trace(digits.digits_snn().eval(), torch.rand(digits.T, 2, digits.N_IN))
    assert ops(g) == ["input", "linear", "neuron", "linear", "neuron", "output"]
    assert g.meta["step_mode"] == "m"


def test_supported_lists() -> None:
    mods = SUPPORTED["modules"]
    for name in (
        "torch.nn.Linear",
        "torch.nn.Conv2d",
        "spikingjelly.activation_based.neuron.LIFNode",
        "spikingjelly.activation_based.layer.SeqToANNContainer",
        "spikingjelly.activation_based.layer.VotingLayer",
        "snncc.nn.LIF",
    ):
        assert name in mods
    assert "torch.cat" in SUPPORTED["functions"] and "Tensor.view" in SUPPORTED["methods"]


# --------------------------------------------------------------------------- errors


def _error(model: nn.Module, x: torch.Tensor, exc: type = UnsupportedError) -> str:
    with pytest.raises(exc) as info:
        trace(model, x)
    return str(info.value)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            layer.Linear(4, 8), neuron.IFNode(), layer.Linear(8, 8), nn.PReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def test_unsupported_module_names_path_type_and_list() -> None:
    msg = _error(Encoder(), torch.rand(2, 1, 4))
    assert "'features.3'" in msg
    assert "torch.nn.modules.activation.PReLU" in msg
    # a summary of what is supported (families, functions) and where the full list is
    assert "torch.nn (" in msg and "SpikingJelly (" in msg and "cat" in msg
    assert "snncc.frontend.SUPPORTED" in msg and len(msg) < 600
    assert msg.count("is not supported") == 1


def test_unsupported_module_fails_before_running() -> None:
    """A module that would crash when run still gets the 'not supported' message."""
    net = nn.Sequential(layer.Linear(4, 4), nn.LSTM(3, 3))
    msg = _error(net, torch.rand(2, 1, 4))
    assert "'1'" in msg and "LSTM" in msg and "supported modules" in msg


class Mean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = layer.Linear(4, 3, step_mode="m")
        self.sn = neuron.LIFNode(step_mode="m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn(self.fc(x)).mean(0)


def test_mean_over_time_is_a_static_output() -> None:
    """``.mean(0)`` of a sequence is one value without a time axis: the output is [B, ...]."""
    g = trace(Mean(), torch.rand(3, 2, 4))
    assert ops(g) == ["input", "linear", "neuron", "time_reduce", "output"]
    (n,) = g.iter_ops("time_reduce")
    assert g.attrs(n)["op"] == "mean" and g.node(n)["shape"] == ["B", 3]


class MeanTimeAndFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sn = neuron.LIFNode(step_mode="m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn(x).mean((0, 2))


def test_reduce_over_time_and_features_is_refused() -> None:
    msg = _error(MeanTimeAndFeatures(), torch.rand(3, 2, 4))
    assert "Tensor.mean" in msg and "dim 0 alone" in msg
    assert "test_frontend.py" in msg  # the user's source line


class Sigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(layer.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.block(x))


def test_unsupported_function() -> None:
    msg = _error(Sigmoid(), torch.rand(3, 2, 4))
    assert "function torch.sin" in msg and "supported functions" in msg


def test_mixed_step_modes() -> None:
    net = nn.Sequential(
        layer.Linear(4, 3), neuron.IFNode(step_mode="m"), neuron.LIFNode(step_mode="s")
    )
    msg = _error(net, torch.rand(3, 2, 4))
    assert "mixed step modes" in msg
    assert "'1' (IFNode, step_mode='m')" in msg and "'2' (LIFNode, step_mode='s')" in msg


def test_mixed_snncc_and_single_step_spikingjelly() -> None:
    net = nn.Sequential(nn.Linear(4, 3), snn.LIF(), neuron.IFNode())
    msg = _error(net, torch.rand(3, 2, 4))
    assert "mixed step modes" in msg and "'1' (LIF" in msg and "'2' (IFNode" in msg


def test_plain_conv_in_multistep_model() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), neuron.IFNode(step_mode="m"))
    msg = _error(net, torch.rand(3, 2, 1, 5, 5))
    assert "'0'" in msg and "Conv2d" in msg and "SeqToANNContainer" in msg


def test_padding_mode() -> None:
    net = nn.Sequential(layer.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), neuron.IFNode())
    msg = _error(net, torch.rand(3, 2, 1, 5, 5))
    assert "'0'" in msg and "padding_mode='reflect'" in msg and "'zeros'" in msg


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_asymmetric_same_padding() -> None:
    net = nn.Sequential(layer.Conv1d(1, 2, 4, padding="same"), neuron.IFNode())
    msg = _error(net, torch.rand(3, 2, 1, 8))
    assert "padding='same'" in msg


def test_unsupported_surrogate() -> None:
    net = nn.Sequential(
        layer.Linear(4, 3), neuron.IFNode(surrogate_function=surrogate.PoissonPass())
    )
    msg = _error(net, torch.rand(3, 2, 4))
    assert "'1'" in msg and "IFNode" in msg and "PoissonPass" in msg and "stochastic" in msg
    assert "surrogate.Sigmoid" in msg


def test_non_spiking_surrogate() -> None:
    net = nn.Sequential(
        layer.Linear(4, 3), neuron.LIFNode(surrogate_function=surrogate.Sigmoid(spiking=False))
    )
    assert "spiking=False" in _error(net, torch.rand(3, 2, 4))


def test_neuron_precision() -> None:
    sn = neuron.LIFNode(step_mode="m")
    sn._neuron_precision = (torch.float16, "fp16", "fp32")
    msg = _error(nn.Sequential(layer.Linear(4, 3), sn), torch.rand(3, 2, 4))
    assert "'1'" in msg and "precision" in msg


class ConfiguredLIF(neuron.LIFNode):
    """A subclass that only sets defaults: the base's maths, read from its attributes."""

    def __init__(self) -> None:
        super().__init__(tau=3.0, v_threshold=0.5, step_mode="m")


class RechargedLIF(neuron.LIFNode):
    """A subclass with a step method of its own: it may change the maths."""

    def neuronal_charge(self, x: torch.Tensor) -> None:
        self.v = self.v + x


def test_neuron_subclass_that_only_configures_is_its_base() -> None:
    import snncc

    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(4, 3, step_mode="m"), ConfiguredLIF())
    x = torch.rand(6, 2, 4) * 4
    functional.reset_net(net)
    want = net(x)
    assert want.sum() > 0 and (want == 0).any()  # the comparison sees spikes and silences
    got = snncc.compile(net, x, backend="reference")(x)
    assert torch.equal(got, want)
    (node,) = by_op(trace(net, x), "neuron")
    spec = spec_of(node)
    assert (spec.tau, spec.v_threshold) == (3.0, 0.5)


def test_neuron_subclass_with_its_own_step_method_is_refused_with_the_way_out() -> None:
    """SpikingJelly 2.0's LIFNode steps through its functional code and never calls
    neuronal_charge (SpikingJelly runs RechargedLIF exactly as LIFNode): compiling it either
    way would hide the user's mistake, so it is refused saying how to write the neuron."""
    x = torch.rand(3, 2, 4)
    assert torch.equal(RechargedLIF(step_mode="m")(x), neuron.LIFNode(step_mode="m")(x))
    msg = _error(nn.Sequential(layer.Linear(4, 3), RechargedLIF()), x)
    assert "'1'" in msg and "RechargedLIF overrides neuronal_charge of LIFNode" in msg
    assert "never calls" in msg and "SimpleBaseNode" in msg


def test_neuron_inside_seq_to_ann() -> None:
    net = nn.Sequential(layer.SeqToANNContainer(nn.Linear(4, 3), neuron.IFNode()))
    msg = _error(net, torch.rand(3, 2, 4))
    assert "'0.1'" in msg and "SeqToANNContainer" in msg


class Pick(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sn = snn.IF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn(x)[-1]


def test_indexing_time_is_unsupported() -> None:
    msg = _error(Pick(), torch.rand(3, 2, 4))
    assert "operator.getitem" in msg


class FoldBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sn = snn.IF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn(x).view(-1, 4)


def test_reshape_merging_time_and_batch() -> None:
    msg = _error(FoldBatch(), torch.rand(3, 2, 4))
    assert "Tensor.view" in msg and "[T, B, ...]" in msg


def test_flatten_over_batch_is_unsupported() -> None:
    net = nn.Sequential(
        layer.Linear(4, 3, step_mode="m"), neuron.IFNode(step_mode="m"), nn.Flatten()
    )
    msg = _error(net, torch.rand(3, 2, 4))
    assert "'2'" in msg and "batch dim" in msg


class AddConst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sn = snn.IF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn(x) + 1.0


def test_add_constant_is_add_scalar() -> None:
    g = trace(AddConst(), torch.rand(3, 2, 4))
    (n,) = g.iter_ops("add_scalar")
    assert g.attrs(n)["value"] == 1.0


class Param(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sn = snn.IF()
        self.gain = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn(x) * self.gain


def test_bare_parameter_is_unsupported() -> None:
    msg = _error(Param(), torch.rand(3, 2, 4))
    assert "'gain'" in msg and "supported modules" in msg


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sn = snn.IF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.sn(x)
        return y if y.sum() > 0 else -y


def test_data_dependent_control_flow() -> None:
    """Control flow on tensor values is refused naming the user's line (shapes are resolved)."""
    msg = _error(Branchy(), torch.rand(3, 2, 4))
    assert "return y if y.sum() > 0 else -y" in msg and "test_frontend.py" in msg
    assert "depends on tensor values" in msg


def test_bad_example_input() -> None:
    _error(mlp("m"), torch.rand(8), ShapeError)
    msg = _error(mlp("m"), torch.rand(3, 2, 5), ShapeError)
    assert "'0'" in msg  # names where running the example failed


class Twice(nn.Module):
    def __init__(self, sn: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.sn = sn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn(self.fc(self.sn(x)))


def test_stateful_module_called_twice() -> None:
    msg = _error(Twice(neuron.IFNode(step_mode="m")), torch.rand(3, 2, 4))
    assert "'sn'" in msg and "more than once" in msg


def test_snncc_neuron_called_twice_is_fine() -> None:
    """snncc.nn modules start from a fresh state on every call: two calls are two neurons."""
    g = trace(Twice(snn.IF()), torch.rand(3, 2, 4))
    assert ops(g) == ["input", "neuron", "linear", "neuron", "output"]
    assert [g.node(n)["name"] for n in g.iter_ops("neuron")] == ["sn", "sn"]


# --------------------------------------------------------------------------- snnTorch / Norse

snntorch = pytest.importorskip("snntorch")
norse = pytest.importorskip("norse.torch")
from norse.torch.functional.lif import LIFParameters  # noqa: E402
from snntorch import surrogate as snn_surrogate  # noqa: E402


def _snn_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(4, 6),
        snntorch.Leaky(beta=0.9, init_hidden=True, learn_beta=True, reset_delay=False),
        nn.Linear(6, 3),
        snntorch.Leaky(beta=0.8, init_hidden=True, output=True, reset_mechanism="zero"),
    )


def test_snntorch_per_step_structure() -> None:
    g = trace(_snn_mlp(), torch.rand(5, 2, 4))
    assert g.meta["source"] == "snntorch" and g.meta["step_mode"] == "s"
    # (spk, mem) of the last neuron: two nodes with the same input and params
    assert ops(g) == ["input", "linear", "neuron", "linear", "neuron", "neuron", "output", "output"]
    n1, n2, n3 = (g.node(n) for n in g.iter_ops("neuron"))
    s1, s2, s3 = spec_of(n1), spec_of(n2), spec_of(n3)
    assert s1.charge == "snntorch_leaky" and s1.reset == "subtract" and not s1.reset_delay
    assert s1.fire_cmp == ">" and s1.surrogate == "atan" and s1.alpha == 2.0
    assert s1.param_roles == ("beta", "threshold", "graded_spikes_factor")
    assert s1.learnable == ("beta",) and s2.learnable == ()
    assert n1["params"]["beta"] == "1.beta" and g.params["1.beta"].dtype == np.float32
    assert s2.reset == "hard" and s2.v_reset == 0.0 and s2.reset_delay
    assert (s2.output, s3.output) == ("spike", "membrane") and n2["params"] == n3["params"]
    assert g.inputs(g.meta["outputs"][1]) == [list(g.iter_ops("neuron"))[2]]


class _SnnLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.lif = snntorch.Leaky(beta=0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem = self.lif.init_leaky()
        out = []
        for step in range(x.size(0)):
            spk, mem = self.lif(self.fc(x[step]), mem)
            out.append(spk)
        return torch.stack(out)


@pytest.mark.parametrize("T", [1, 3])
def test_snntorch_loop_folds_to_one_step(T: int) -> None:
    g = trace(_SnnLoop(), torch.rand(T, 2, 4))
    assert g.meta["time_loop"] == "folded" and g.meta["step_mode"] == "s"
    assert ops(g) == ["input", "linear", "neuron", "output"]  # mem feeds only the next step
    assert g.node(g.meta["inputs"][0])["shape"] == ["B", 4]


def test_rleaky_is_a_recurrent_component() -> None:
    net = nn.Sequential(
        nn.Linear(4, 5), snntorch.RLeaky(beta=0.9, linear_features=5, init_hidden=True)
    )
    g = trace(net, torch.rand(3, 2, 4))
    (neuron_id,) = g.iter_ops("neuron")
    rec = [e for e in g.users(neuron_id) if g.op(e.dst) == "linear"]
    assert len(rec) == 1 and rec[0].delay == 1
    back = g.in_edges(neuron_id)
    assert [(e.port, e.src, e.delay) for e in back][1] == (1, rec[0].dst, 0)
    assert g.recurrent_components() == [{neuron_id, rec[0].dst}]
    assert g.node(rec[0].dst)["params"] == {
        "weight": "1.recurrent.weight",
        "bias": "1.recurrent.bias",
    }
    one = snntorch.RLeaky(beta=0.9, all_to_all=False, V=0.5, init_hidden=True)
    g = trace(nn.Sequential(nn.Linear(4, 5), one), torch.rand(3, 2, 4))
    (nid,) = g.iter_ops("neuron")
    assert spec_of(g.node(nid)).charge == "snntorch_rleaky_v" and g.recurrent_components() == []
    assert g.node(nid)["params"]["V"] == "1.V" and spec_of(g.node(nid)).learnable == ("V",)


def test_norse_constants_are_exact_and_parameters_named() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tau = nn.Parameter(torch.tensor(123.0))
            self.seq = norse.SequentialState(
                nn.Linear(4, 5), norse.LIFCell(LIFParameters(tau_mem_inv=self.tau), dt=7e-4)
            )

        def forward(self, x: torch.Tensor, state=None):
            return self.seq(x, state)

    g = trace(Net(), torch.rand(3, 2, 4))
    assert g.meta["source"] == "norse" and g.meta["step_mode"] == "s"
    (nid,) = g.iter_ops("neuron")
    spec = spec_of(g.node(nid))
    assert spec.charge == "norse_lif" and spec.learnable == ("tau_mem_inv",)
    assert g.node(nid)["params"] == {"tau_mem_inv": "tau"}
    syn = torch.as_tensor(1.0 / 5e-3)  # Norse's default, a float32 0-dim tensor
    assert spec.extra["neg_dt_tau_syn_inv"] == float(-7e-4 * syn)
    assert spec.extra["dt"] == 7e-4 and spec.v_init == 0.0 and spec.v_threshold == 1.0


def test_norse_sequence_modules_are_multi_step() -> None:
    seq = norse.SequentialState(nn.Linear(4, 5), norse.LIF(), nn.Linear(5, 2), norse.LI())
    g = trace(seq, torch.rand(3, 2, 4))
    assert g.meta["step_mode"] == "m"
    assert ops(g) == ["input", "linear", "neuron", "linear", "neuron", "output"]
    assert spec_of(by_op(g, "neuron")[1]).output == "membrane"


def test_seq_to_ann_structure() -> None:
    net = nn.Sequential(
        snn.SeqToANN(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)), snn.LIF(), snn.LI()
    )
    g = trace(net, torch.rand(3, 2, 1, 4, 4))
    assert ops(g) == ["input", "conv2d", "batchnorm", "neuron", "neuron", "output"]
    assert by_op(g, "batchnorm")[0]["attrs"]["stats"] == "sequence"
    assert "snncc.nn.SeqToANN" in SUPPORTED["modules"]
    msg = _error(nn.Sequential(snn.SeqToANN(nn.Linear(4, 4), snn.IF())), torch.rand(3, 2, 4))
    assert "'0.1'" in msg and "SeqToANN" in msg


def test_trace_leaves_snntorch_state_untouched() -> None:
    net = _snn_mlp()
    mem = torch.full((2, 6), 0.25)
    net[1].mem = mem
    trace(net, torch.rand(3, 2, 4))
    assert net[1].mem is mem and torch.equal(mem, torch.full((2, 6), 0.25))


# -- errors


def test_snntorch_unsupported_options() -> None:
    x = torch.rand(3, 2, 4)
    net = nn.Sequential(
        nn.Linear(4, 4), snntorch.Leaky(beta=0.9, init_hidden=True, inhibition=True)
    )
    assert "'1'" in (msg := _error(net, x)) and "inhibition" in msg
    lif = snntorch.Leaky(beta=0.9, init_hidden=True)
    lif.reset_mechanism = "zero"  # the buffer changes, the bound state_function does not
    msg = _error(nn.Sequential(nn.Linear(4, 4), lif), x)
    assert "'subtract'" in msg and "'zero'" in msg and "state_function" in msg
    lif = snntorch.Leaky(beta=0.9, init_hidden=True, spike_grad=snn_surrogate.SSO())
    assert "surrogate.atan" in _error(nn.Sequential(nn.Linear(4, 4), lif), x)


class _Loop(nn.Module):
    """A loop whose body is chosen by ``kind`` to break one folding rule."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(4, 4)
        self.lif = snntorch.Leaky(beta=0.9)
        self.cell = norse.LIFCell()

    def forward(self, x: torch.Tensor):
        k = self.kind
        mem = torch.ones(2, 4) if k == "not_fresh" else self.lif.init_leaky()
        spk = torch.zeros(2, 4)
        s = None
        out = []
        acc = torch.ones(2, 4) if k == "sum_not_zero" else 0
        if k == "sum_f64":
            acc = torch.zeros(2, 4, dtype=torch.float64)
        steps = 2 if k == "count" else x.size(0)
        for step in range(steps):
            cur = self.fc(x[step])
            if k == "branch" and step == 1:
                cur = cur * 2.0
            if k == "cross":
                cur = cur + spk
            if k == "whole":
                cur = self.fc(x)[step]
            if k == "not_threaded":
                mem = self.lif.init_leaky()
            if k == "norse_fresh":
                spk, _ = self.cell(cur, s)
            elif k == "sliced":  # the same state, handed back through a slice
                out_t = self.lif(cur, mem)
                spk, mem = out_t[0], out_t[1:][0]
            else:
                spk, mem = self.lif(cur, mem)
            if k == "sum_twice":  # two additions to the same sum so far
                spk = spk + (acc + mem)
            acc = acc + spk
            if k == "sum_inside":
                spk = spk * acc
            out.append(spk)
        if k == "sum_mixed":
            return acc + spk
        if k in ("sum_not_zero", "sum_f64"):
            return acc
        if k == "last":
            return spk
        if k == "reduce":
            return torch.stack(out).sum(0)
        return torch.stack(out)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("branch", ["time step 1", "differs from step 0", "branch on the step index"]),
        ("cross", ["at time step 1 uses a value computed at time step 0", "RLeaky"]),
        ("whole", ["whole input sequence"]),
        ("not_fresh", ["'lif'", "not fresh"]),
        ("not_threaded", ["'lif'", "not the state it returned at the previous step"]),
        ("sliced", ["'lif'", "as it was returned (spk, mem = lif(x, mem); not through a slice"]),
        ("norse_fresh", ["'cell'", "fresh state at every step"]),
        ("last", ["of time step 2 only", "torch.stack"]),
        ("reduce", ["stacked over time", "outside the model"]),
        ("count", ["runs 2 steps", "T = 3"]),
        ("sum_inside", ["reads the sum", "while the loop still adds to it"]),
        ("sum_twice", ["reads the sum", "while the loop still adds to it"]),
        ("sum_mixed", ["combines a sum accumulated over the loop's steps with", "of one step"]),
        ("sum_not_zero", ["starts a sum over the loop's steps from", "not zero"]),
        ("sum_f64", ["from zeros of float64[2, 4]", "the added values' dtype"]),
    ],
)
def test_time_loop_errors(kind: str, words: list[str]) -> None:
    msg = _error(_Loop(kind), torch.rand(3, 2, 4))
    for w in words:
        assert w in msg, (w, msg)


def test_norse_unsupported_options() -> None:
    x = torch.rand(3, 2, 4)
    adj = norse.LIFCell(LIFParameters(method="adjoint"))
    msg = _error(norse.SequentialState(nn.Linear(4, 4), adj), x)
    assert "'1'" in msg and "adjoint" in msg

    class Hidden(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seq = norse.SequentialState(nn.Linear(4, 4), norse.LIFCell(), return_hidden=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.seq(x)[0][-1]

    assert "return_hidden" in _error(Hidden(), x)
    leak = norse.LIFCell(LIFParameters(v_leak=nn.Parameter(torch.tensor(0.1))))
    assert "v_leak" in _error(norse.SequentialState(nn.Linear(4, 4), leak), x)
    mixed = norse.SequentialState(nn.Linear(4, 4), norse.LIF(), norse.LIFCell())
    assert "mixed step modes" in _error(mixed, x)


def _bare_modules() -> dict:
    """(module, its own eager run over the sequence) of one framework module alone."""
    import norse.torch as norse
    import snntorch

    def sj_plif():
        m = neuron.ParametricLIFNode(init_tau=2.0, surrogate_function=surrogate.ATan())
        functional.set_step_mode(m, "m")
        return m, lambda x: m(x)

    def sj_lif_single_step():
        m = neuron.LIFNode(tau=2.0)
        return m, lambda x: torch.stack([m(xt) for xt in x])

    def snntorch_leaky():
        m = snntorch.Leaky(beta=0.9, learn_beta=True, learn_threshold=True, init_hidden=True)
        return m, lambda x: torch.stack([m(xt) for xt in x])

    def norse_lif_cell():
        m = norse.LIFCell()

        def run(x):
            out, state = [], None
            for xt in x:
                z, state = m(xt, state)
                out.append(z)
            return torch.stack(out)

        return m, run

    def snncc_lif():
        m = snn.LIF(tau=2.0)
        return m, lambda x: m(x)

    return {
        "spikingjelly-plif": sj_plif,
        "spikingjelly-lif-single-step": sj_lif_single_step,
        "snntorch-leaky": snntorch_leaky,
        "norse-lifcell": norse_lif_cell,
        "snncc-lif": snncc_lif,
    }


@pytest.mark.parametrize("name", sorted(_bare_modules()))
def test_a_framework_neuron_compiles_on_its_own(name: str) -> None:
    """``snncc.compile(LIFNode(...), x)``: traced inside a container (the tracer keeps
    framework modules as leaves, and a root cannot be one), its parameters under their own
    names. Before, the module's internals ran under the tracer and failed on a line about
    ``Tensor.keys`` (SpikingJelly) or ``torch.zeros_like`` (snnTorch)."""
    import snncc

    module, eager = _bare_modules()[name]()
    x = torch.rand(6, 2, 12, generator=torch.Generator().manual_seed(3)) * 2.0
    cm = snncc.compile(module, x, backend="reference")
    with torch.no_grad():
        want = eager(x)
    got = cm(x)
    got = got[0] if isinstance(got, tuple) else got
    assert want.sum() > 0, "the input must make the neuron fire"
    assert torch.equal(got, want)
    assert set(dict(cm.to_torch().named_parameters())) == set(dict(module.named_parameters()))


class _Scaled(nn.Module):
    """A 0-dim tensor kept as a plain attribute (SNASNet's zero op), or as a buffer."""

    def __init__(self, buffer: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.sn = neuron.IFNode(step_mode="m")
        if buffer:
            self.register_buffer("gain", torch.tensor(0.5))
        else:
            self.gain = torch.tensor(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn(self.fc(x)) * self.gain + self.gain


def test_a_plain_0_dim_tensor_attribute_is_a_constant() -> None:
    """Not in the state_dict, so a constant of the model: a scale like the Python number (torch
    promotes a 0-dim tensor as a scalar). A buffer is state, read directly: still refused."""
    x = torch.rand(3, 2, 4) * 3
    model = _Scaled(buffer=False)
    g = trace(model, x)
    assert [g.attrs(n)["value"] for n in g.iter_ops("scale")] == [0.5]
    assert [g.attrs(n)["value"] for n in g.iter_ops("add_scalar")] == [0.5]
    with torch.no_grad():
        assert torch.equal(snncc.compile(model, x)(x), model(x))
    assert "'gain'" in _error(_Scaled(buffer=True), x)
