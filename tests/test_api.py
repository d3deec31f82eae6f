"""snncc.compile / CompiledModel / snncc.load: behaviour users rely on.

Every check compares real outputs with SpikingJelly's own eager run (reference
backend: exactly; jax: within the project's spike tolerance).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from checks import assert_fires
from spikingjelly.activation_based import functional, layer, neuron, surrogate

import snncc
from snncc.errors import ShapeError

T, B, N_IN, N_HID, N_OUT = 6, 3, 16, 24, 5
JAX_SPIKE_TOL = 1e-4  # share of spikes that may differ on the jax backend


def make_model() -> torch.nn.Sequential:
    """A small SpikingJelly multi-step MLP with two LIF layers, seeded weights."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        layer.Linear(N_IN, N_HID, step_mode="m"),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), step_mode="m"),
        layer.Linear(N_HID, N_OUT, step_mode="m"),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), step_mode="m"),
    ).eval()
    with torch.no_grad():  # stronger weights, so both layers fire 15-30% of the time
        model[0].weight.mul_(3.0)
        model[2].weight.mul_(3.0)
        model[2].bias.add_(1.5)
    return model


def make_input(t: int = T, b: int = B, seed: int = 0) -> torch.Tensor:
    """Inputs in [0, 3): strong enough that both layers fire."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(t, b, N_IN, generator=g) * 3.0


def eager(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    functional.reset_net(model)
    with torch.no_grad():
        y = model(x)
    functional.reset_net(model)
    return y


@pytest.fixture(scope="module")
def model() -> torch.nn.Sequential:
    return make_model()


@pytest.fixture(scope="module")
def cm(model):
    return snncc.compile(model, make_input(), backend="reference")


@pytest.fixture(scope="module")
def cm_jax(model):
    pytest.importorskip("jax")
    return snncc.compile(model, make_input(), backend="jax")


def test_reference_matches_spikingjelly_and_fires(model, cm):
    x = make_input(seed=3)
    y = cm(x)
    want = eager(model, x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (T, B, N_OUT)
    assert 0 < want.sum() < want.numel()  # the comparison means something
    assert_fires(model, x)  # the hidden layer too
    assert torch.equal(y, want)


def test_numpy_in_numpy_out(model, cm):
    x = make_input(seed=4)
    y = cm(x.numpy())
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, eager(model, x).numpy())


def test_batch_and_time_may_differ_from_example(model, cm):
    x = make_input(t=9, b=7, seed=5)
    assert torch.equal(cm(x), eager(model, x))


def test_numpy_example_input_compiles_the_same(model, cm):
    from_numpy = snncc.compile(model, make_input().numpy())
    x = make_input(seed=12)
    assert from_numpy.input_spec == cm.input_spec
    assert torch.equal(from_numpy(x), cm(x))


def test_call_starts_from_fresh_state(cm):
    x = make_input(seed=6)
    assert torch.equal(cm(x), cm(x))


def test_run_in_chunks_equals_one_call(cm):
    x = make_input(t=10, seed=7)
    whole, _ = cm.run(x)
    first, state = cm.run(x[:4])
    second, _ = cm.run(x[4:], state)
    assert torch.equal(torch.cat([first, second]), whole)
    # ... and a fresh run of the second chunk differs, so the state really carried over
    assert not torch.equal(cm(x[4:]), whole[4:])


def test_properties(model, cm):
    assert cm.backend == "reference"
    from snncc.ir.graph import Graph

    assert isinstance(cm.ir, Graph)
    assert cm.ir.meta.get("groups"), "the reference pipeline ends with temporal fusion"
    assert isinstance(cm.source, str) and cm.source
    assert cm.input_spec == {"shape": ["B", N_IN], "dtype": "float32"}
    assert "reference" in repr(cm)


def test_params_keyed_by_state_dict_names(model, cm):
    used = {name for n in cm.ir.nx.nodes for name in cm.ir.node(n)["params"].values()}
    state = model.state_dict()
    assert set(cm.params) == used == set(state)  # the MLP uses every state_dict entry
    for name, value in cm.params.items():
        assert isinstance(value, np.ndarray)
        np.testing.assert_array_equal(value, state[name].numpy())


def test_save_load_round_trip(tmp_path, cm):
    out = cm.save(tmp_path / "art")
    manifest = json.loads((out / "snncc.json").read_text())
    assert manifest["backend"] == "reference"
    assert manifest["snncc_version"] == snncc.__version__
    assert manifest["input"] == {"shape": ["B", N_IN], "dtype": "float32"}
    for rel in manifest["source"]:
        assert (out / rel).is_file()
    assert sorted(manifest["source"]) == sorted(f"source/{f}" for f in cm.files())

    loaded = snncc.load(out)
    assert loaded.backend == "reference"
    x = make_input(t=7, seed=8)
    assert torch.equal(loaded(x), cm(x))
    assert set(loaded.params) == set(cm.params)
    for name in cm.params:
        np.testing.assert_array_equal(loaded.params[name], cm.params[name])


def test_dump_ir_writes_one_file_per_pass(tmp_path, model):
    dump = tmp_path / "dump"
    snncc.compile(model, make_input(), dump_ir=dump)
    names = sorted(p.name for p in dump.iterdir())
    assert names and names[-1].endswith("temporal_fusion.txt")
    assert all(n.endswith(".txt") for n in names)


def test_trace_is_exported(model):
    from snncc.ir.graph import Graph

    g = snncc.trace(model, make_input())
    assert isinstance(g, Graph)
    assert sum(1 for _ in g.iter_ops("neuron")) == 2


def test_jax_backend_types_in_same_type_out(model, cm_jax):
    import jax
    import jax.numpy as jnp

    x = make_input(seed=9)
    want = eager(model, x).numpy()
    y_torch = cm_jax(x)
    y_np = cm_jax(x.numpy())
    y_jax = cm_jax(jnp.asarray(x.numpy()))
    assert isinstance(y_torch, torch.Tensor)
    assert isinstance(y_np, np.ndarray)
    assert isinstance(y_jax, jax.Array)
    for y in (y_torch.numpy(), y_np, np.asarray(y_jax)):
        assert np.mean(y != want) <= JAX_SPIKE_TOL


def test_jax_chunks_and_round_trip(tmp_path, cm_jax):
    x = make_input(t=8, seed=10).numpy()
    whole = cm_jax(x)
    first, state = cm_jax.run(x[:3])
    second, _ = cm_jax.run(x[3:], state)
    np.testing.assert_array_equal(np.concatenate([first, second]), whole)
    loaded = snncc.load(cm_jax.save(tmp_path / "jax_art"))
    assert loaded.backend == "jax"
    np.testing.assert_array_equal(loaded(x), whole)


def test_jax_fn_gives_differentiable_function(cm_jax):
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(make_input(seed=11).numpy())
    params = {k: jnp.asarray(v) for k, v in cm_jax.params.items()}
    y = cm_jax.jax_fn(params, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(cm_jax(x)))
    grads = jax.grad(lambda p: jnp.sum(cm_jax.jax_fn(p, x)))(params)
    assert set(grads) == set(params)
    assert any(float(jnp.abs(g).sum()) > 0 for g in grads.values())


def test_jax_fn_on_reference_is_a_clear_error(cm):
    with pytest.raises(snncc.UnsupportedError, match="backend 'jax'"):
        cm.jax_fn({}, make_input())


def test_save_over_an_older_artifact_leaves_no_stale_sources(tmp_path, cm, cm_jax):
    out = tmp_path / "art"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    cm.save(out)
    old_files = {f"source/{name}" for name in cm.files()}
    cm_jax.save(out)
    now = {str(p.relative_to(out)) for p in (out / "source").rglob("*") if p.is_file()}
    assert now == {f"source/{name}" for name in cm_jax.files()}
    assert old_files and old_files.isdisjoint(now)  # reference and jax file names differ
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert snncc.load(out).backend == "jax"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_to_torch_trains_like_the_source(backend):
    """cm.to_torch(): the source's state_dict names, the source's gradients, a falling loss."""
    from snncc.examples import digits

    model = digits.load_pretrained()
    images, labels = digits.test_split()
    x, y = digits.encode(images[:64]), torch.as_tensor(labels[:64])
    module = snncc.compile(model, x[:, :1], backend=backend).to_torch()
    assert set(module.state_dict()) == set(model.state_dict())

    def loss_of(out: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(out.mean(0) * 10.0, y)

    functional.reset_net(model)
    loss_of(model(x)).backward()
    loss = loss_of(module(x))
    loss.backward()
    grads = dict(module.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-5, atol=1e-6)

    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        step_loss = loss_of(module(x))
        step_loss.backward()
        opt.step()
        losses.append(step_loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_to_torch_deep_copies_share_the_kernels_and_train_on_their_own(backend):
    """copy.deepcopy (a best-epoch snapshot; torch's AveragedModel for SWA/EMA copies the
    model so) gives a module that runs the same bits, with weights of its own and the same
    loaded kernels (which could not be copied: they hold ctypes pointers). A training step
    on the copy leaves the original as it was; the average runs."""
    import copy
    import io

    x = make_input()
    module = snncc.compile(make_model(), x, backend=backend).to_torch()
    y = module(x).detach()
    twin = copy.deepcopy(module)
    assert torch.equal(twin(x), y)
    kernels = getattr(module.snncc_program, "kernels", {})
    for n, kernel in kernels.items():  # cpu: shared, not copied
        assert twin.snncc_program.kernels[n].library is kernel.library
    assert all(a is not b for a, b in zip(twin.parameters(), module.parameters()))
    opt = torch.optim.SGD(twin.parameters(), lr=0.5)
    (twin(x) * torch.linspace(-1, 1, N_OUT)).sum().backward()
    opt.step()
    assert torch.equal(module(x), y) and not torch.equal(twin(x), y)
    average = torch.optim.swa_utils.AveragedModel(module)
    average.update_parameters(twin)
    assert average(x).shape == y.shape
    assert 0 < float(y.sum()) < y.numel()
    if backend == "cpu":  # a pickle could only carry the code: refused, saying what to save
        with pytest.raises(TypeError, match=r"not pickled .*state_dict\(\).*cm\.save"):
            torch.save(module, io.BytesIO())


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("cast", ["double", "half"])
def test_to_torch_refuses_a_module_cast_to_another_dtype(backend, cast):
    """The program computes in the dtype it was compiled for; .double() / .half() on the
    module used to end in torch's "mat1 and mat2 must have the same dtype" deep in a run."""
    x = make_input()
    module = snncc.compile(make_model(), x, backend=backend).to_torch()
    getattr(module, cast)()
    with pytest.raises(snncc.UnsupportedError, match=r"^to_torch\(\): '0\.weight' is torch\.f"):
        module(x)
    module.float()
    assert torch.equal(module(x), eager(make_model(), x))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bool, torch.uint8])
def test_to_torch_refuses_an_input_of_another_dtype(backend, dtype):
    """As cm(x) does (and the source model, whose Linear refuses float64 x): the module cast
    such an input to float32 without a word, a float64 one losing its low bits."""
    x = make_input()
    module = snncc.compile(make_model(), x, backend=backend).to_torch()
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(
        ShapeError, match=rf"^input %0 dtype mismatch: expected float32, got {name}"
    ):
        module(x.to(dtype))


def test_to_torch_runs_under_torch_compile():
    """torch.compile of the module: same outputs and gradients as eager, no warnings about
    snncc's code (the kernels run in graph breaks; spike packing steps aside while the
    compiler traces)."""
    import warnings

    from snncc.examples import digits

    x = digits.encode(digits.test_split()[0][:16])
    module = snncc.compile(digits.load_pretrained(), x[:, :1], backend="cpu").to_torch()
    grads = []
    for run in (module, torch.compile(module)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = run(x)
            (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
        about_us = [w for w in caught if "saved_tensors" in str(w.message) or "snncc" in w.filename]
        assert not about_us, [str(w.message)[:200] for w in about_us]
        grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
        module.zero_grad()
        if run is module:
            y_eager = y.detach()
    assert torch.equal(y.detach(), y_eager)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-6, atol=1e-7)


def test_to_torch_refuses_jax():
    pytest.importorskip("jax")
    from snncc.examples import digits

    x = digits.encode(digits.test_split()[0][:2])
    cm = snncc.compile(digits.load_pretrained(), x, backend="jax")
    with pytest.raises(snncc.UnsupportedError, match="jax_fn"):
        cm.to_torch()


@pytest.mark.parametrize(
    "backend, option, value",
    [
        ("reference", "training", "yes"),
        ("cpu", "recompute", 1),
        ("cuda", "cuda_graph", "off"),
        ("jax", "cache_dir", 3.5),
    ],
)
def test_backend_options_of_the_wrong_type_are_refused(backend, option, value):
    if backend == "jax":
        pytest.importorskip("jax")
    from snncc.examples import digits

    with pytest.raises(snncc.UnsupportedError, match=f"{backend} backend option {option}="):
        snncc.compile(
            digits.load_pretrained(), torch.rand(2, 1, 64), backend=backend, **{option: value}
        )
