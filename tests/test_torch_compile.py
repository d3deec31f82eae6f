"""The neuron kernels as torch custom ops: torch.compile and torch.export of ``to_torch()``.

Eagerly a program runs its kernels through an ``autograd.Function`` (cheaper per
call); traced, through the ``snncc::neuron_forward`` / ``snncc::neuron_backward``
custom ops (backends/cpu/custom_ops.py). These tests check that tracing sees one
graph with no break, that the traced kernels give the eager bits, and that an
exported program runs without the compiled model and equals it bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from checks import assert_export_runs_elsewhere
from torch import nn

import snncc
from snncc.backends.cpu import custom_ops

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _sj_mlp(plif: bool = False) -> nn.Module:
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    torch.manual_seed(0)

    def node() -> nn.Module:
        if plif:
            return neuron.ParametricLIFNode(init_tau=2.0, surrogate_function=surrogate.ATan())
        return neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan())

    net = nn.Sequential(layer.Linear(12, 32), node(), layer.Linear(32, 5), node())
    with torch.no_grad():  # default init leaves the output layer silent on these inputs
        net[0].weight.mul_(3.0)
        net[2].weight.mul_(6.0)
    functional.set_step_mode(net, "m")
    return net


def _input(T: int = 6, B: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((T, B, 12), generator=g) * 3.0


def _step(module: nn.Module, run, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    for p in module.parameters():
        p.grad = None
    y = run(x)
    (y * torch.linspace(0.5, 1.5, y.shape[-1])).sum().backward()
    return y.detach(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("plif", [False, True], ids=["lif", "plif"])
def test_compiled_to_torch_is_one_graph_with_the_eager_bits(plif: bool) -> None:
    """fullgraph=True: any graph break is an error; forward bit for bit, gradients within
    rounding (inductor sums a bias gradient in another order than eager torch)."""
    x = _input()
    cm = snncc.compile(_sj_mlp(plif), x, backend="cpu")
    module = cm.to_torch()
    explained = torch._dynamo.explain(module)(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)
    y_c, g_c = _step(module, compiled, x)
    y_e, g_e = _step(module, module, x)
    assert torch.equal(y_c, y_e)
    assert 0 < float(y_e.sum()) < y_e.numel()
    assert g_c.keys() == g_e.keys() and g_e
    for name in g_e:
        torch.testing.assert_close(g_c[name], g_e[name], rtol=1e-5, atol=1e-6, msg=name)
    if plif:  # the learnable decay's gradient flows through the op's autograd formula
        assert any(name.endswith(".w") for name in g_e)
    # a second input of another batch size runs the same compiled code path
    x2 = _input(B=7, seed=1)
    assert torch.equal(compiled(x2), module(x2))


@pytest.mark.parametrize("plif", [False, True], ids=["lif", "plif"])
def test_eager_calls_between_compiled_ones_do_not_recompile(plif: bool) -> None:
    """An eager call binds the module's tensors into the program and memoises what its
    kernels derive; neither may change what a compiled call's guards saw (both once
    recompiled the module on its next compiled call). Each compiled call comes first
    in a fresh program, so nothing is memoised before dynamo looks."""
    x = _input()
    for training in (True, False):
        torch._dynamo.reset()
        module = snncc.compile(_sj_mlp(plif), x, backend="cpu").to_torch()
        compiled = torch.compile(module, fullgraph=True)
        with torch.set_grad_enabled(training), torch._dynamo.config.patch(error_on_recompile=True):
            first = compiled(x)
            eager = module(x)
            again = compiled(x)
        assert torch.equal(first, eager) and torch.equal(again, eager)
        assert 0 < float(eager.sum()) < eager.numel()


def test_eager_runs_stay_off_the_custom_ops(monkeypatch) -> None:
    """Eager calls go through the autograd.Function (a custom op's dispatch costs more)."""
    calls = []
    real = custom_ops.run

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(custom_ops, "run", spy)
    x = _input()
    cm = snncc.compile(_sj_mlp(), x, backend="cpu")
    y = cm.to_torch()(x)
    y.sum().backward()
    assert not calls


def test_custom_ops_pass_torch_opcheck() -> None:
    """torch.library.opcheck: schema, fake (meta) shapes and the autograd registration agree
    with the real kernels."""
    x = _input()
    cm = snncc.compile(_sj_mlp(plif=True), x, backend="cpu")
    kernel = next(iter(cm.program.kernels.values()))
    key = custom_ops.kernel_key(kernel)
    T, N = 6, 4 * 32
    xf = torch.rand((T, N)) * 2
    k = torch.tensor(0.3, requires_grad=True).sigmoid()
    # packed: tensors [x, *ports, *adds, *qs, *given states], counts [1, ports, adds, qs,
    # then 1 or 0 per state variable]
    args = (key, [xf.requires_grad_(), k], [1, 0, 0, 1, 0], [4, 32], True)
    torch.library.opcheck(torch.ops.snncc.neuron_forward.default, args)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda b: b.update(target="metal"), r"unknown kernel target 'metal'"),
        (lambda b: b["spec"].update(evil=1), r"malformed kernel key .*'evil'"),
        (lambda b: b["spec"].update(surrogate='atan"); system("id'), r"surrogate 'atan\"\)"),
        (lambda b: b["spec"].update(v_threshold="1.0f; x"), r"v_threshold is '1.0f; x', not a"),
        (lambda b: b["options"].update(x_dtype="float; x"), r"x_dtype='float; x'; supported"),
        (lambda b: b.update(prologue=[{"kind": "asm"}]), r"prologue step kind 'asm' cannot"),
        (lambda b: b.update(target="cuda", block="128) x ("), r"block='128\) x \(': threads"),
        (lambda b: b.update(target="cuda", block=1 << 20), r"block=1048576: threads per block"),
    ],
    ids=["target", "field", "surrogate", "threshold", "x_dtype", "prologue", "block", "huge"],
)
def test_an_op_key_from_a_file_is_checked_data(edit, match) -> None:
    """An exported program names each kernel by a key (JSON) that a loading process renders
    and builds: it is a file's data, so every field is checked before anything is rendered,
    and a bad one is refused in one line (the cuda block size included, which before was
    taken as given and failed only at launch, on a GPU)."""
    import json

    cm = snncc.compile(_sj_mlp(), _input(), backend="cpu")
    body = json.loads(custom_ops.kernel_key(next(iter(cm.program.kernels.values()))))
    edit(body)
    with pytest.raises(snncc.SnnccError, match=match) as caught:
        custom_ops.kernel_of(json.dumps(body, sort_keys=True))
    assert "\n" not in str(caught.value)
    with pytest.raises(snncc.UnsupportedError, match="malformed kernel key"):
        custom_ops.kernel_of("{not json")


def test_exported_digits_model_equals_the_compiled_one_bit_for_bit(tmp_path) -> None:
    """torch.export of the trained digits model (any batch size), saved and run in a fresh
    process that never compiled it: the exported graph's kernel ops rebuild their kernels
    from their keys, and the spikes are the compiled model's, bit for bit."""
    from snncc.examples import digits

    images, labels = digits.test_split()
    x = digits.encode(images[:32])
    cm = snncc.compile(digits.load_pretrained(), x, backend="cpu")
    module = cm.to_torch().eval()
    batch = torch.export.Dim("B", max=4096)
    exported = torch.export.export(module, (x,), dynamic_shapes={"x": {1: batch}})
    with torch.no_grad():
        x_all = digits.encode(images)
        assert torch.equal(exported.module()(x), cm(x))
        y_all = exported.module()(x_all)
        assert torch.equal(y_all, cm(x_all))
    assert digits.accuracy(y_all, labels) > 0.9
    assert_export_runs_elsewhere(exported, x_all, y_all, tmp_path)


def test_an_aotinductor_package_runs_in_python_bit_for_bit(tmp_path) -> None:
    """torch._inductor.aoti_compile_and_package of an exported model that holds a fused
    recurrent group and a layer (both kinds of snncc op, a layer with no ports, adds or
    given states), T and B dynamic: the loaded package equals the eager module bit for
    bit at a length and batch it was not traced with. (AOTInductor hands an empty list
    argument to a Python custom op as None: the ops take their tensors packed.)"""
    from spikingjelly.activation_based import functional, layer, neuron
    from test_recurrent_fused import sj_container

    torch.manual_seed(0)
    tail = nn.Sequential(layer.Linear(24, 5), neuron.LIFNode(tau=2.0))
    functional.set_step_mode(tail, "m")
    with torch.no_grad():
        tail[0].weight.mul_(4.0)
    model = nn.Sequential(sj_container(), tail)
    g = torch.Generator().manual_seed(1)
    x = torch.rand((12, 4, 12), generator=g) * 12.0
    cm = snncc.compile(model, x, backend="cpu", recurrent="fused")
    assert "recurrent, fused" in cm.program.source
    module = cm.to_torch().eval()
    dims = {0: torch.export.Dim("T", min=2, max=4096), 1: torch.export.Dim("B", max=4096)}
    exported = torch.export.export(module, (x,), dynamic_shapes={"x": dims})
    path = torch._inductor.aoti_compile_and_package(
        exported, package_path=str(tmp_path / "model.pt2")
    )
    runner = torch._inductor.aoti_load_package(path)
    x2 = torch.rand((29, 7, 12), generator=g) * 12.0
    with torch.no_grad():
        y2 = module(x2)
        assert torch.equal(runner(x2), y2)
    assert 0 < float(y2.sum()) < y2.numel()


def test_torchscript_is_refused_in_one_line_and_the_reference_traces() -> None:
    """torch.jit.trace records torch ops only: on the cpu backend it would miss every kernel
    (it failed inside torch with "unordered_map::at"), so the module, and a function that
    calls the compiled model, refuse it naming what traces them; torch.jit.script cannot compile a program's Python
    forward on any backend. The reference backend is torch ops throughout, and a
    torch.jit.trace of it runs an input it was not traced with bit for bit."""
    x = _input()
    net = _sj_mlp()
    cm = snncc.compile(net, x, backend="cpu")
    for traced in (cm.to_torch(), lambda t: cm(t)):
        with pytest.raises(snncc.UnsupportedError, match=r"^torch\.jit\.trace cannot .*export"):
            torch.jit.trace(traced, x)
    for backend in ("cpu", "reference"):
        module = snncc.compile(net, x, backend=backend).to_torch()
        with pytest.raises(snncc.UnsupportedError, match=r"^torch\.jit\.script cannot .*export"):
            torch.jit.script(module)
    module = snncc.compile(net, x, backend="reference").to_torch()
    traced = torch.jit.trace(module, x)
    x2 = _input(seed=3)
    y2 = module(x2)
    assert torch.equal(traced(x2), y2) and 0 < float(y2.sum()) < y2.numel()


def test_more_models_than_dynamos_recompile_limit_each_compile_whole() -> None:
    """torch.compile keeps at most ``recompile_limit`` (8) graphs per code object, and
    every snncc model is a ProgramModule: with one shared forward, the ninth model compiled
    in a process failed under fullgraph=True (and ran eagerly without it). Each module has
    its own forward code object, so a sweep over more models compiles every one.
    (backend="eager": dynamo alone holds the limit; inductor would only add time.)"""
    limit = torch._dynamo.config.recompile_limit
    x = _input()
    modules = []
    for hidden in range(8, 8 + limit + 2):
        from spikingjelly.activation_based import functional, layer, neuron

        net = nn.Sequential(layer.Linear(12, hidden), neuron.LIFNode(tau=2.0))
        functional.set_step_mode(net, "m")
        modules.append(snncc.compile(net, x, backend="cpu").to_torch())
    assert len({id(m.forward.__code__) for m in modules}) == len(modules)  # (== is by value)
    for module in modules:
        assert torch.equal(torch.compile(module, fullgraph=True, backend="eager")(x), module(x))


def test_a_module_compiles_whole_after_many_other_neuron_specs() -> None:
    """A traced call finds each neuron spec's graph by identity: the content key (JSON)
    would be a graph break. The identity cache used to be cleared whole at 1024 specs, so
    in a long process (a sweep, a test run) a live model's specs dropped out and its next
    torch.compile(fullgraph=True) failed. Now an entry leaves only with its spec."""
    import gc

    from snncc.ir.neurons import base

    x = _input()
    module = snncc.compile(_sj_mlp(), x, backend="cpu").to_torch()
    spec = next(iter(module.snncc_program._specs.values()))
    others = [spec.replace(tau=2.0 + (i + 1) / 4096) for i in range(1100)]  # kept alive
    for other in others:
        base.build(other)
    assert torch.equal(torch.compile(module, fullgraph=True, backend="eager")(x), module(x))
    n = len(base._BY_ID)
    del others
    gc.collect()
    assert id(spec) in base._BY_ID and len(base._BY_ID) < n - 1000  # the dead ones left
