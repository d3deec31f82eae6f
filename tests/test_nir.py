"""NIR export/import: round trips, peers' exporter files, errors.

Round trips (snncc -> NIR file -> snncc) must reproduce the reference
backend's outputs exactly. Files written by SpikingJelly's, snnTorch's and
Norse's own exporters are compared with the peer's eager run where the file
describes the model exactly, and with the peer's own importer where the
exporter was lossy (the measured agreements are asserted).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings

import h5py
import nir
import numpy as np
import pytest
import torch
from checks import assert_fires
from torch import nn

import snncc
from snncc import nn as snn2
from snncc.errors import CheckpointError, UnsupportedError
from snncc.exchange.nir_export import to_nir
from snncc.exchange.nir_import import from_nir

T, B = 10, 3


@pytest.fixture(autouse=True)
def _quiet():
    torch.manual_seed(0)
    logging.disable(logging.WARNING)  # the peers log their own NIR caveats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield
    logging.disable(logging.NOTSET)


def _spiking(y: torch.Tensor) -> None:
    """A comparison means something only when the outputs are neither all 0 nor all 1."""
    assert 0 < float(y.detach().sum()) < y.numel()


def _run(graph, x: torch.Tensor) -> torch.Tensor:
    return snncc.compile_graph(graph)(x)


def _strip(path) -> nir.NIRGraph:
    """The file without snncc's metadata: what a file from another tool looks like."""
    g = nir.read(str(path))
    for node in g.nodes.values():
        node.metadata = {}
    g.metadata = {}
    return g


def _round_trip(model: nn.Module, x: torch.Tensor, dt: float, tmp_path, **kw):
    assert_fires(model, x)
    cm = snncc.compile(model, x)
    y = cm(x)
    path = tmp_path / "model.nir"
    to_nir(cm.ir, path, dt=dt, **kw)
    return y, path


def _scaled(model: nn.Module, k: float, bias: float = 0.0) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(k)
                if m.bias is not None:
                    m.bias.add_(bias)
    return model


# --------------------------------------------------------------------------- round trips


def test_round_trip_spikingjelly_conv_mlp_exact(tmp_path):
    from spikingjelly.activation_based import functional, layer, neuron

    net = nn.Sequential(
        layer.Conv2d(1, 4, 3, padding=1),
        neuron.LIFNode(tau=2.0),
        layer.AvgPool2d(2),
        layer.Flatten(),
        layer.Linear(16, 6),
        neuron.LIFNode(tau=3.7, decay_input=False, v_reset=-0.1, v_threshold=0.5),
        layer.Linear(6, 3),
        neuron.IFNode(),
    )
    functional.set_step_mode(net, "m")
    _scaled(net, 4.0, 0.3)
    x = torch.rand(T, B, 1, 4, 4) * 4
    y, path = _round_trip(net, x, 1e-4, tmp_path)
    _spiking(y)
    assert torch.equal(_run(from_nir(path, dt=1e-4), x), y)
    # the NIR fields alone (no snncc metadata) reproduce SpikingJelly's forms exactly too
    assert torch.equal(_run(from_nir(_strip(path), dt=1e-4), x), y)

    plif = nn.Sequential(
        layer.Linear(4, 5),
        neuron.ParametricLIFNode(init_tau=3.0),
        layer.Linear(5, 3),
        neuron.ParametricLIFNode(init_tau=2.5, decay_input=False),
    )
    functional.set_step_mode(plif, "m")
    x = torch.rand(T, B, 4) * 3
    y, path = _round_trip(_scaled(plif, 4.0), x, 1e-3, tmp_path)
    _spiking(y)
    assert torch.equal(_run(from_nir(path, dt=1e-3), x), y)


def test_ge_threshold_written_one_float_below(tmp_path):
    """SpikingJelly fires on v >= th, NIR on v > th: snncc writes th one float32 lower."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), snn2.IF(v_threshold=1.0))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
    x = torch.full((6, 1, 2), 0.5)  # the membrane lands exactly on 1.0 every second step
    y, path = _round_trip(net, x, 1e-3, tmp_path)
    assert y[:, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]
    field = nir.read(str(path)).nodes["1"].v_threshold
    assert np.all(field == np.nextafter(np.float32(1.0), np.float32(0)))
    assert torch.equal(_run(from_nir(_strip(path), dt=1e-3), x), y)
    spec = next(
        d["attrs"]["neuron"]
        for _, d in from_nir(path, dt=1e-3).nx.nodes(data=True)
        if d["op"] == "neuron"
    )
    assert spec["fire_cmp"] == ">=" and spec["v_threshold"] == 1.0  # restored from metadata


def test_round_trip_snncc_nn_lif_if_li(tmp_path):
    net = nn.Sequential(
        nn.Linear(6, 5),
        snn2.LIF(tau=3.0),
        nn.Linear(5, 4),
        snn2.IF(),
        nn.Linear(4, 2),
        snn2.LI(tau=2.0),
    )
    _scaled(net, 3.0, 0.2)
    x = torch.rand(T, B, 6) * 2
    y, path = _round_trip(net, x, 1e-4, tmp_path)
    assert torch.equal(_run(from_nir(path, dt=1e-4), x), y)
    assert torch.equal(_run(from_nir(_strip(path), dt=1e-4), x), y)


def test_round_trip_snntorch_leaky_synaptic_exact(tmp_path):
    import snntorch as snn

    kw = {"reset_mechanism": "zero", "reset_delay": False, "init_hidden": True}
    net = nn.Sequential(
        nn.Linear(5, 6),
        snn.Leaky(beta=torch.rand(6) * 0.5 + 0.45, threshold=torch.rand(6) + 0.5, **kw),
        nn.Linear(6, 4),
        snn.Synaptic(alpha=0.8, beta=0.7, **kw),
        nn.Linear(4, 3),
        snn.Leaky(beta=0.9, graded_spikes_factor=0.5, **kw),
    )
    _scaled(net, 3.0, 0.5)
    x = torch.rand(T, B, 5) * 2
    y, path = _round_trip(net, x, 1e-4, tmp_path)
    _spiking(y * 2)
    back = from_nir(path, dt=1e-4)
    assert torch.equal(_run(back, x), y)
    charges = sorted(
        d["attrs"]["neuron"]["charge"] for _, d in back.nx.nodes(data=True) if d["op"] == "neuron"
    )
    assert charges == ["snntorch_leaky", "snntorch_leaky", "snntorch_synaptic"]


def test_round_trip_norse_lif_lifbox_li_exact(tmp_path):
    import norse.torch as norse

    net = norse.SequentialState(
        nn.Linear(5, 6),
        norse.LIFCell(),
        nn.Linear(6, 4),
        norse.LIFBoxCell(),
        nn.Linear(4, 3),
        norse.LICell(),
    )
    _scaled(net, 3.0, 1.0)
    x = torch.rand(T, B, 5) * 20
    y, path = _round_trip(net, x, 1e-3, tmp_path)
    assert torch.equal(_run(from_nir(path, dt=1e-3), x), y)
    # LIFCell/LICell are the convention's own CubaLIF/CubaLI form: exact without metadata too
    cells = _scaled(
        norse.SequentialState(nn.Linear(5, 6), norse.LIFCell(), nn.Linear(6, 3), norse.LICell()),
        3.0,
        1.0,
    )
    y, path = _round_trip(cells, x, 1e-3, tmp_path)
    assert torch.equal(_run(from_nir(_strip(path), dt=1e-3), x), y)
    # Norse's dt is part of its time constants: another dt is refused, naming it
    with pytest.raises(UnsupportedError, match=r"Norse neuron with dt=0\.001"):
        to_nir(snncc.compile(net, x).ir, dt=1e-4)


def test_round_trip_recurrent_exact(tmp_path):
    import norse.torch as norse
    import snntorch as snn

    rleaky = nn.Sequential(
        nn.Linear(5, 6),
        snn.RLeaky(
            beta=0.9, linear_features=6, reset_mechanism="zero", reset_delay=False, init_hidden=True
        ),
    )
    _scaled(rleaky, 3.0, 0.5)
    x = torch.rand(T, B, 5) * 2
    y, path = _round_trip(rleaky, x, 1e-4, tmp_path)
    _spiking(y)
    g = from_nir(path, dt=1e-4)
    assert torch.equal(_run(g, x), y)
    # the loop's delay sits on the edge leaving the neuron (so the Affine adds its bias at t=0)
    delayed = [(g.op(u), g.op(v)) for u, v, d in g.nx.edges(data=True) if d["delay"]]
    assert delayed == [("neuron", "linear")]
    assert g.recurrent_components()
    assert torch.equal(_run(from_nir(_strip(path), dt=1e-4), x), y)  # measured: same spikes

    rec = norse.SequentialState(norse.LIFRecurrentCell(5, 6), nn.Linear(6, 3), norse.LIFCell())
    _scaled(rec, 2.0, 1.0)
    with torch.no_grad():
        rec[0].input_weights.mul_(4)
    x = torch.rand(T, B, 5) * 30
    y, path = _round_trip(rec, x, 1e-3, tmp_path)
    _spiking(y)
    assert torch.equal(_run(from_nir(path, dt=1e-3), x), y)


def test_lossy_export_refused_names_the_option(tmp_path):
    import snntorch as snn

    x = torch.rand(T, B, 4) * 2
    soft = snncc.compile(nn.Sequential(nn.Linear(4, 3), snn2.LIF(v_reset=None)), x).ir
    with pytest.raises(UnsupportedError, match=r"subtracting the threshold.*accept=\('reset',\)"):
        to_nir(soft, dt=1e-4)
    delayed = snncc.compile(
        nn.Sequential(
            nn.Linear(4, 3), snn.Leaky(beta=0.9, reset_mechanism="zero", init_hidden=True)
        ),
        x,
    ).ir
    with pytest.raises(UnsupportedError, match=r"reset_delay=True.*--accept reset_delay"):
        to_nir(delayed, dt=1e-4)
    # accepted: written as a hard reset, and read back as what the file says (no snncc spec)
    to_nir(soft, tmp_path / "soft.nir", dt=1e-4, accept="reset")
    back = from_nir(tmp_path / "soft.nir", dt=1e-4)
    spec = next(d["attrs"]["neuron"] for _, d in back.nx.nodes(data=True) if d["op"] == "neuron")
    assert spec["reset"] == "hard" and spec["v_reset"] == 0.0
    assert json.loads(nir.read(str(tmp_path / "soft.nir")).metadata["snncc"])["lossy"]
    with pytest.raises(UnsupportedError, match="unknown accept key"):
        to_nir(soft, dt=1e-4, accept="everything")
    pooled = nn.Sequential(snn2.SeqToANN(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2)), snn2.IF())
    with pytest.raises(UnsupportedError, match=r"'0.1' \(maxpool2d\): NIR has no node for this op"):
        to_nir(snncc.compile(pooled, torch.rand(T, B, 1, 6, 6)).ir, dt=1e-4)


# --------------------------------------------------------------------------- peers' files


def test_spikingjelly_exporter_file(tmp_path):
    from spikingjelly.activation_based import layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir, import_from_nir

    net = nn.Sequential(
        layer.Conv2d(1, 4, 3, padding=1),
        neuron.LIFNode(tau=2.0),
        layer.AvgPool2d(2),
        layer.Flatten(),
        layer.Linear(16, 6),
        neuron.LIFNode(tau=3.0, decay_input=False, v_reset=-0.1, v_threshold=0.5),
        layer.Linear(6, 3),
        neuron.IFNode(),
    )
    _scaled(net, 4.0, 0.3)
    x = torch.rand(T, B, 1, 4, 4) * 4
    path = tmp_path / "sj.nir"
    export_to_nir(net, x[0], save_path=path)
    with torch.no_grad():
        y_sj = torch.stack([net(x[t]) for t in range(T)])
    _spiking(y_sj)
    # the file describes SpikingJelly's model exactly once fire=">=" says how it compares
    assert torch.equal(_run(from_nir(path, dt=1e-4, fire=">="), x), y_sj)
    imported, state, ys = import_from_nir(str(path), dt=1e-4), None, []
    with torch.no_grad():
        for t in range(T):
            out, state = imported(x[t], state)
            ys.append(out)
    assert torch.equal(torch.stack(ys), y_sj)  # SpikingJelly's own importer agrees

    # CUBALIFNode (no snncc form of its own): the convention's CubaLIF gives the same spikes
    cuba = _scaled(nn.Sequential(layer.Linear(4, 5), neuron.CUBALIFNode(v_threshold=0.5)), 3.0)
    x = torch.rand(T, B, 4) * 3
    g = export_to_nir(cuba, x[0])
    with torch.no_grad():
        y_sj = torch.stack([cuba(x[t]) for t in range(T)])
    _spiking(y_sj)
    assert torch.equal(_run(from_nir(g, dt=1e-4, fire=">="), x), y_sj)  # measured: identical


def test_spikingjelly_file_fire_convention(tmp_path):
    """A membrane landing exactly on the threshold: NIR's '>' and SpikingJelly's '>=' differ."""
    from spikingjelly.activation_based import layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    net = nn.Sequential(layer.Linear(2, 2, bias=False), neuron.IFNode())
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
    x = torch.full((6, 1, 2), 0.5)
    path = tmp_path / "sj_if.nir"
    export_to_nir(net, x[0], save_path=path)
    with torch.no_grad():
        y_sj = torch.stack([net(x[t]) for t in range(6)])
    assert y_sj.sum() == 6
    assert torch.equal(_run(from_nir(path, dt=1e-4, fire=">="), x), y_sj)
    assert y_sj[:, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]
    y_nir = _run(from_nir(path, dt=1e-4), x)  # NIR's v > 1.0: no spike at 1.0, one at 1.5
    assert y_nir[:, 0, 0].tolist() == [0, 0, 1, 0, 0, 1]


def _snntorch_run(model: nn.Module, x: torch.Tensor, state: bool = False) -> torch.Tensor:
    import snntorch as snn

    for m in model.modules():
        if isinstance(m, snn.SpikingNeuron) and hasattr(m, "reset_mem"):
            m.reset_mem()
    out, st = [], None
    with torch.no_grad():
        for t in range(x.shape[0]):
            if state:
                o, st = model(x[t], st)
            else:
                o = model(x[t])
            out.append(o[0] if isinstance(o, tuple) else o)
    return torch.stack(out)


def _snntorch_file(net: nn.Module, x: torch.Tensor, path) -> None:
    from snntorch.export_nir import export_to_nir

    with contextlib.redirect_stdout(io.StringIO()):
        nir.write(str(path), export_to_nir(net, x[0], ignore_dims=[0]))


def test_snntorch_exporter_file(tmp_path):
    import snntorch as snn
    from snntorch.import_nir import import_from_nir

    def build(mech: str, delay: bool) -> nn.Module:
        kw = {"reset_mechanism": mech, "reset_delay": delay, "init_hidden": True}
        torch.manual_seed(1)
        net = nn.Sequential(
            nn.Linear(5, 6),
            snn.Leaky(beta=torch.rand(6) * 0.5 + 0.45, threshold=torch.full((6,), 0.8), **kw),
            nn.Linear(6, 3),
            snn.Synaptic(
                alpha=torch.full((3,), 0.8),
                beta=torch.full((3,), 0.7),
                threshold=torch.ones(3),
                **kw,
            ),
        )
        return _scaled(net, 3.0, 0.5)

    x = torch.rand(T, B, 5) * 2
    # zero reset, immediate: the file describes the model (beta up to tau's rounding)
    net = build("zero", False)
    _snntorch_file(net, x, tmp_path / "st.nir")
    y_st = _snntorch_run(net, x)
    _spiking(y_st)
    y = _run(from_nir(tmp_path / "st.nir", dt=1e-4), x)
    assert torch.equal(y, y_st)  # measured: identical spikes
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = import_from_nir(nir.read(str(tmp_path / "st.nir")))
    assert torch.equal(_snntorch_run(theirs, x, state=True), y)  # snnTorch's importer agrees

    # default Leaky (subtract, reset_delay=True): the exporter drops both, the file says hard reset
    net = build("subtract", True)
    _snntorch_file(net, x, tmp_path / "st_sub.nir")
    y_st = _snntorch_run(net, x)
    y_hard = _run(from_nir(tmp_path / "st_sub.nir", dt=1e-4), x)
    assert not torch.equal(y_hard, y_st)  # what the file says is not the source model
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = import_from_nir(nir.read(str(tmp_path / "st_sub.nir")))
    assert torch.equal(_snntorch_run(theirs, x, state=True), y_hard)  # snnTorch reads it so too
    # reset="subtract" restores the subtraction (not the one-step delay, which no file records)
    sub = from_nir(tmp_path / "st_sub.nir", dt=1e-4, reset="subtract")
    resets = {
        d["attrs"]["neuron"]["reset"] for _, d in sub.nx.nodes(data=True) if d["op"] == "neuron"
    }
    assert resets == {"subtract"}
    assert not torch.equal(_run(sub, x), y_hard)


def test_snntorch_rleaky_file(tmp_path):
    import snntorch as snn

    net = nn.Sequential(
        nn.Linear(5, 6),
        snn.RLeaky(
            beta=0.9, linear_features=6, reset_mechanism="zero", reset_delay=False, init_hidden=True
        ),
    )
    _scaled(net, 3.0, 0.5)
    x = torch.rand(T, B, 5) * 2
    _snntorch_file(net, x, tmp_path / "rl.nir")
    y_st = _snntorch_run(net, x)
    _spiking(y_st)
    g = from_nir(tmp_path / "rl.nir", dt=1e-4)
    assert g.recurrent_components()
    assert torch.equal(_run(g, x), y_st)  # measured: identical spikes (bias from t = 0 included)


def _norse_run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    state, out = None, []
    with torch.no_grad():
        for t in range(x.shape[0]):
            o, state = model(x[t], state)
            out.append(o)
    return torch.stack(out)


def test_norse_exporter_graph(tmp_path):
    import norse.torch as norse

    x = torch.rand(T, B, 5) * 20

    def build(cell) -> nn.Module:
        torch.manual_seed(1)
        return _scaled(
            norse.SequentialState(nn.Linear(5, 6), cell(), nn.Linear(6, 4), cell()), 3.0, 1.5
        )

    box = build(norse.LIFBoxCell)
    g = norse.to_nir(box, x[0])
    # Norse 1.1 writes tau = dt * (1/tau_inv): at Norse's own dt every Euler step overshoots
    with pytest.raises(UnsupportedError, match=r"norse_dt\*\*2.*accept=\('unstable',\)"):
        from_nir(g, dt=1e-3)
    y_norse = _norse_run(box, x)
    _spiking(y_norse)
    y = _run(from_nir(g, dt=1e-6), x)  # dt = norse_dt**2 gives back dt * tau_mem_inv = 0.1
    assert torch.equal(y, y_norse)  # measured: identical spikes
    assert torch.equal(_norse_run(norse.from_nir(g, dt=1e-6), x), y)

    # LIFCell -> CubaLIF(w_in=1): the file's synapse takes dt/tau_syn of the input where Norse's
    # LIFCell takes all of it; snncc reproduces the file, as Norse's own importer does
    cell = build(norse.LIFCell)
    g = norse.to_nir(cell, x[0])
    nir.write(str(tmp_path / "norse.nir"), g, compression=None)  # gzip fails on its 0-d arrays
    y = _run(from_nir(tmp_path / "norse.nir", dt=1e-6), x)
    assert torch.equal(y, _run(from_nir(g, dt=1e-6), x))
    assert not torch.equal(y, _norse_run(cell, x))
    assert torch.equal(_norse_run(norse.from_nir(g, dt=1e-6), x), y)


# --------------------------------------------------------------------------- errors


def _mlp_graph(**neuron) -> nir.NIRGraph:
    node = neuron.pop("node", None) or nir.LIF(
        tau=np.full(3, 2e-3),
        r=np.ones(3),
        v_leak=np.zeros(3),
        v_threshold=np.ones(3),
        v_reset=np.zeros(3),
    )
    return nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type={"input": np.array([2])}),
            "fc": nir.Affine(weight=np.ones((3, 2), np.float32), bias=np.zeros(3, np.float32)),
            "lif": node,
            "out": nir.Output(output_type={"output": np.array([3])}),
        },
        edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")],
        type_check=False,
    )


def test_generic_lif_matches_the_convention():
    """LIF(tau, r, v_leak = v_reset) -> h = v + (r*x - (v - v_leak)) / (tau/dt), fire v > th."""
    g = _mlp_graph(
        node=nir.LIF(
            tau=np.full(3, 4e-3),
            r=np.full(3, 2.0),
            v_leak=np.zeros(3),
            v_threshold=np.ones(3),
            v_reset=np.zeros(3),
        )
    )
    x = torch.rand(T, B, 2)
    y = _run(from_nir(g, dt=1e-3), x)
    v = torch.zeros(B, 3)
    want = []
    for t in range(T):
        h = v + ((x[t] @ torch.ones(3, 2).T) * 2.0 - (v - 0.0)) / 4.0
        s = (h - 1.0 > 0).float()
        v = s * 0.0 + (1.0 - s) * h
        want.append(s)
    assert torch.equal(y, torch.stack(want))


def test_generic_per_neuron_lif_and_cubalif(tmp_path):
    """Per-neuron parameters go through the Norse forms (c = float32(dt/tau)) and an exact
    diagonal gain; snncc re-exports the imported graph to the same fields."""
    tau = np.array([2e-3, 4e-3, 8e-3])
    th = np.array([0.5, 1.0, 1.5])
    r = np.array([1.0, 2.0, 0.5])
    lif = nir.LIF(tau=tau, r=r, v_leak=np.full(3, 0.1), v_threshold=th, v_reset=np.zeros(3))
    g = from_nir(_mlp_graph(node=lif), dt=1e-3)
    x = torch.rand(T, B, 2) * 2
    y = _run(g, x)
    c = torch.tensor(np.float32(1e-3 / tau))
    v, want = torch.full((B, 3), 0.1), []
    for t in range(T):
        i = (x[t] @ torch.ones(3, 2).T) @ torch.diag(torch.tensor(r, dtype=torch.float32)).T
        v1 = v + c * ((i + 0.1) - v)
        z = (v1 - torch.tensor(th, dtype=torch.float32) > 0).float()
        v = (1 - z) * v1 + z * 0.0
        want.append(z)
    _spiking(y)
    assert torch.equal(y, torch.stack(want))
    again = to_nir(g, dt=1e-3).nodes["lif"]
    for key in ("tau", "v_threshold", "v_leak", "v_reset"):
        assert np.array_equal(getattr(again, key), getattr(lif, key)), key

    cuba = nir.CubaLIF(
        tau_syn=np.full(3, 5e-3),
        tau_mem=tau,
        r=np.ones(3),
        v_leak=np.zeros(3),
        v_threshold=th,
        w_in=np.full(3, 5.0),
    )
    y = _run(from_nir(_mlp_graph(node=cuba), dt=1e-3), x)
    v, cur, want = torch.zeros(B, 3), torch.zeros(B, 3), []
    for t in range(T):
        i1 = cur + x[t] @ torch.ones(3, 2).T  # k = r * w_in * dt / tau_syn = 1
        v1 = v + c * ((0.0 - v) + i1)
        cur = i1 + torch.tensor(np.float32(-0.2)) * i1
        z = (v1 - torch.tensor(th, dtype=torch.float32) > 0).float()
        v = (1 - z) * v1 + z * 0.0
        want.append(z)
    _spiking(y)
    assert torch.equal(y, torch.stack(want))


def test_missing_dt_and_bad_options(tmp_path):
    with pytest.raises(UnsupportedError, match="needs dt"):
        from_nir(_mlp_graph())
    net = nn.Sequential(nn.Linear(2, 3), snn2.IF())
    to_nir(snncc.compile(net, torch.rand(2, 1, 2)).ir, tmp_path / "m.nir", dt=1e-4)
    with pytest.raises(UnsupportedError, match=r"written by snncc with dt=0\.0001"):
        from_nir(tmp_path / "m.nir")
    with pytest.raises(UnsupportedError, match="needs dt"):
        to_nir(snncc.compile(net, torch.rand(2, 1, 2)).ir)
    with pytest.raises(UnsupportedError, match="fire"):
        from_nir(_mlp_graph(), dt=1e-3, fire=">>")
    with pytest.raises(UnsupportedError, match="unknown accept"):
        from_nir(_mlp_graph(), dt=1e-3, accept="nope")


def test_unsupported_and_malformed_files_name_the_node(tmp_path):
    g = _mlp_graph(node=nir.Delay(delay=np.full(3, 1e-3)))
    with pytest.raises(UnsupportedError, match=r"NIR node 'lif' \(Delay\)"):
        from_nir(g, dt=1e-3)
    g = _mlp_graph()
    g.edges.append(("lif", "ghost"))
    with pytest.raises(UnsupportedError, match="'ghost'"):
        from_nir(g, dt=1e-3)
    g = _mlp_graph()
    g.nodes["in"] = nir.Input(input_type={"input": None})
    with pytest.raises(UnsupportedError, match=r"NIR node 'in' \(Input\): it declares no shape"):
        from_nir(g, dt=1e-3)
    g = _mlp_graph()
    g.nodes["fc"] = nir.Affine(weight=np.ones((3, 5), np.float32), bias=np.zeros(3, np.float32))
    with pytest.raises(
        UnsupportedError, match=r"'fc' \(Affine\): its weight \[3, 5\] does not fit"
    ):
        from_nir(g, dt=1e-3)
    g = _mlp_graph()
    g.nodes["fc"] = nir.Affine(weight=np.ones((3, 2)) / 3, bias=np.zeros(3))
    with pytest.raises(UnsupportedError, match=r"float32.*accept=\('float32',\)"):
        from_nir(g, dt=1e-3)
    assert from_nir(g, dt=1e-3, accept="float32")
    g = _mlp_graph()
    g.edges.append(("lif", "fc2"))
    g.nodes["fc2"] = nir.Linear(weight=np.ones((3, 3), np.float32))
    g.edges += [("fc2", "fc3"), ("fc3", "fc2")]
    g.nodes["fc3"] = nir.Linear(weight=np.ones((3, 3), np.float32))
    with pytest.raises(UnsupportedError, match="loop without a neuron"):
        from_nir(g, dt=1e-3)
    with pytest.raises(CheckpointError, match="does not exist"):
        from_nir(tmp_path / "none.nir", dt=1e-3)
    (tmp_path / "junk.nir").write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError, match="not a NIR file"):
        from_nir(tmp_path / "junk.nir", dt=1e-3)
    nir.write(str(tmp_path / "ok.nir"), _mlp_graph())
    with h5py.File(tmp_path / "ok.nir", "r+") as f:
        del f["node/nodes/lif/type"]
        f["node/nodes/lif"].create_dataset("type", data="Hodgkin")
    with pytest.raises(UnsupportedError, match=r"NIR node 'lif' has type 'Hodgkin'"):
        from_nir(tmp_path / "ok.nir", dt=1e-3)


def test_edited_file_falls_back_to_the_convention(tmp_path):
    net = _scaled(nn.Sequential(nn.Linear(3, 4), snn2.LIF(tau=2.0)), 4.0, 1.0)
    x = torch.rand(T, B, 3) * 3
    _, path = _round_trip(net, x, 1e-4, tmp_path)
    g = nir.read(str(path))
    g.nodes["1"].tau = g.nodes["1"].tau * 2  # tau 4 steps now, whatever the metadata says
    with pytest.warns(UserWarning, match="does not match its field 'tau'"):
        back = from_nir(g, dt=1e-4)
    spec = next(d["attrs"]["neuron"] for _, d in back.nx.nodes(data=True) if d["op"] == "neuron")
    assert spec["tau"] == pytest.approx(4.0)


def test_cli_export_import(tmp_path, capsys):
    from snncc.cli import main

    net = nn.Sequential(nn.Linear(3, 4), snn2.LIF(tau=2.0))
    cm = snncc.compile(net, torch.rand(T, B, 3))
    cm.save(tmp_path / "art")
    assert (
        main(
            [
                "export",
                str(tmp_path / "art"),
                "--format",
                "nir",
                "--dt",
                "1e-4",
                "-o",
                str(tmp_path / "m.nir"),
            ]
        )
        == 0
    )
    assert main(["import", str(tmp_path / "m.nir"), "-o", str(tmp_path / "back")]) == 2
    assert "needs dt" in capsys.readouterr().err
    assert (
        main(["import", str(tmp_path / "m.nir"), "--dt", "1e-4", "-o", str(tmp_path / "back")]) == 0
    )
    x = torch.rand(T, B, 3) * 3
    assert torch.equal(snncc.load(tmp_path / "back")(x), cm(x))
