"""Every bad input gets one clear snncc error naming the thing that is wrong.

Checked through the Python API and, where the CLI adds its own layer (files,
specs, checkpoints), through ``snncc.cli.main``: one ``snncc: error:`` line on
stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import layer, neuron

import snncc
from snncc.cli import main
from snncc.errors import BackendError, CheckpointError, ShapeError, UnsupportedError


def small_model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        layer.Linear(8, 4, step_mode="m"), neuron.LIFNode(step_mode="m")
    ).eval()


def x(t: int = 4, b: int = 2, n: int = 8) -> torch.Tensor:
    return torch.rand(t, b, n, generator=torch.Generator().manual_seed(0)) * 2


@pytest.fixture(scope="module")
def cm():
    return snncc.compile(small_model(), x())


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI, assert exit status 2 and a one-line error; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("snncc: error: ")
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------- compile()
class LSTMNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(8, 4)

    def forward(self, inp):
        return self.rnn(inp)[0]


def test_unsupported_module_names_it():
    with pytest.raises(UnsupportedError, match="LSTM"):
        snncc.compile(LSTMNet(), x())


def _hooked(kind: str) -> torch.nn.Module:
    """The small model with one hook, parametrization or weight transform of torch's."""
    from torch.nn.utils import parametrizations, prune

    net = small_model()
    fc = net[0]
    if kind == "forward hook":
        net[1].register_forward_hook(lambda mod, inp, out: out * 0.0)
    elif kind == "forward pre-hook":
        fc.register_forward_pre_hook(lambda mod, inp: (inp[0] * 2.0,))
    elif kind == "backward hook":
        net.register_full_backward_hook(lambda mod, gi, go: None)
    elif kind == "prune":
        prune.l1_unstructured(fc, "weight", amount=0.5)
    elif kind == "weight_norm":
        with pytest.warns(FutureWarning):
            torch.nn.utils.weight_norm(fc)
    elif kind == "parametrization":
        parametrizations.weight_norm(fc)
    elif kind == "monitor":
        from spikingjelly.activation_based import monitor

        monitor.OutputMonitor(net, neuron.LIFNode)
    return net


@pytest.mark.parametrize(
    "kind, words",
    [
        (
            "forward hook",
            (
                "module '1'",
                "LIFNode",
                "a forward hook (_hooked.<locals>.<lambda> at test_errors.py:",
                "remove it",
            ),
        ),
        (
            "forward pre-hook",
            ("module '0'", "a forward pre-hook (_hooked.<locals>.<lambda> at", "remove it"),
        ),
        ("backward hook", ("the model (", "a backward hook", "remove it")),
        ("prune", ("L1Unstructured", "torch.nn.utils.prune.remove(module, 'weight')")),
        ("weight_norm", ("WeightNorm", "torch.nn.utils.remove_weight_norm(module)")),
        (
            "parametrization",
            ("_WeightNorm", "torch.nn.utils.parametrize.remove_parametrizations(module, 'weight')"),
        ),
        ("monitor", ("module '1'", "OutputMonitor.create_hook", "monitor.remove_hooks()")),
    ],
)
def test_a_hook_the_program_would_drop_is_refused(kind: str, words: tuple[str, ...]) -> None:
    """Hooks and weight transforms are code around a module's computation: compiled without
    them the outputs would differ silently (a forward hook that zeroes the spikes gave the
    unhooked outputs; prune and the old weight_norm crashed deep in tracing and left a fake
    tensor as the user's weight). Refused before the model runs; baking them works."""
    net = _hooked(kind)
    weight = net[0].weight
    with pytest.raises(UnsupportedError) as info:
        snncc.compile(net, x())
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
    if kind != "parametrization":  # (a parametrized weight is computed on every access)
        assert net[0].weight is weight
    assert not isinstance(net[0].weight, torch._subclasses.fake_tensor.FakeTensor)


@pytest.mark.parametrize("kind", ["prune", "parametrization"])
def test_a_baked_weight_transform_compiles_exact(kind: str) -> None:
    from torch.nn.utils import parametrize, prune

    net = _hooked(kind)
    with torch.no_grad():
        want = net(x())
    if kind == "prune":
        prune.remove(net[0], "weight")
    else:
        parametrize.remove_parametrizations(net[0], "weight")
    got = snncc.compile(net, x())(x())
    assert torch.equal(got, want)


def test_a_global_module_hook_is_refused() -> None:
    from torch.nn.modules.module import register_module_forward_hook

    handle = register_module_forward_hook(lambda mod, inp, out: None)
    try:
        with pytest.raises(UnsupportedError, match="a global module hook is registered"):
            snncc.compile(small_model(), x())
    finally:
        handle.remove()


def test_example_input_wrong_rank():
    with pytest.raises(ShapeError, match=r"rank >= 3.*\[2, 8\]"):
        snncc.compile(small_model(), torch.rand(2, 8))


def test_example_input_not_float():
    with pytest.raises(ShapeError, match="int64"):
        snncc.compile(small_model(), torch.ones(4, 2, 8, dtype=torch.int64))


def test_example_input_not_an_array():
    with pytest.raises(ShapeError, match="list"):
        snncc.compile(small_model(), [[[0.0] * 8] * 2] * 4)


def test_example_input_dtype_differs_from_model():
    with pytest.raises(ShapeError, match="float64.*float32"):
        snncc.compile(small_model(), np.random.rand(4, 2, 8))


def test_unknown_backend_lists_choices():
    with pytest.raises(BackendError, match=r"'cuda-x'.*jax.*reference"):
        snncc.compile(small_model(), x(), backend="cuda-x")


# ----------------------------------------------------- CompiledModel inputs
def test_wrong_per_step_shape(cm):
    with pytest.raises(ShapeError, match=r"expected \[T, B, 8\].*got \[4, 2, 7\]"):
        cm(x(n=7))


def test_wrong_rank(cm):
    with pytest.raises(ShapeError, match=r"expected \[T, B, 8\].*got \[2, 8\]"):
        cm(torch.rand(2, 8))


def test_non_float_input(cm):
    with pytest.raises(ShapeError, match="expected float32, got int32"):
        cm(np.ones((4, 2, 8), dtype=np.int32))


def test_other_float_dtype_is_not_cast_silently(cm):
    with pytest.raises(ShapeError, match="expected float32, got float64"):
        cm(np.random.rand(4, 2, 8))


def test_empty_time_axis(cm):
    with pytest.raises(ShapeError, match="at least one time step"):
        cm(torch.rand(0, 2, 8))


def test_not_an_array(cm):
    with pytest.raises(ShapeError, match="torch.Tensor or numpy.ndarray"):
        cm("abc")


# ---------------------------------------------------------- artifacts
def test_load_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="nope"):
        snncc.load(tmp_path / "nope")


def test_load_missing_manifest(tmp_path):
    with pytest.raises(CheckpointError, match="snncc.json"):
        snncc.load(tmp_path)


def test_load_corrupt_manifest(tmp_path):
    (tmp_path / "snncc.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"snncc.json is not valid JSON"):
        snncc.load(tmp_path)


def test_load_manifest_missing_field(tmp_path, cm):
    out = cm.save(tmp_path / "a")
    manifest = json.loads((out / "snncc.json").read_text())
    del manifest["backend"]
    (out / "snncc.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="'backend'"):
        snncc.load(out)


def test_load_missing_ir(tmp_path, cm):
    import shutil

    out = cm.save(tmp_path / "b")
    shutil.rmtree(out / "ir")
    with pytest.raises(CheckpointError):
        snncc.load(out)


# ------------------------------------------------------------- CLI layer
def write_model_file(tmp_path) -> str:
    path = tmp_path / "net.py"
    path.write_text(
        "import torch\n"
        "from spikingjelly.activation_based import layer, neuron\n"
        "def make():\n"
        "    return torch.nn.Sequential(layer.Linear(8, 4, step_mode='m'),"
        " neuron.LIFNode(step_mode='m'))\n"
        "def not_a_model():\n"
        "    return 42\n"
    )
    return str(path)


def test_cli_missing_model_file(tmp_path, capsys):
    line = cli_error(capsys, ["ir", f"{tmp_path}/absent.py:make", "--input-shape", "4,1,8"])
    assert "absent.py" in line and "does not exist" in line


def test_cli_missing_attribute(tmp_path, capsys):
    path = write_model_file(tmp_path)
    line = cli_error(capsys, ["ir", f"{path}:nothing", "--input-shape", "4,1,8"])
    assert "net.py" in line and "'nothing'" in line


def test_cli_factory_not_identifier(tmp_path, capsys):
    path = write_model_file(tmp_path)
    line = cli_error(capsys, ["ir", f"{path}:make()", "--input-shape", "4,1,8"])
    assert "'make()'" in line and "identifier" in line


def test_cli_factory_returns_non_module(tmp_path, capsys):
    path = write_model_file(tmp_path)
    line = cli_error(capsys, ["ir", f"{path}:not_a_model", "--input-shape", "4,1,8"])
    assert "int" in line and "torch.nn.Module" in line


def test_cli_missing_module(capsys):
    line = cli_error(capsys, ["ir", "no_such_pkg.models:make", "--input-shape", "4,1,8"])
    assert "no_such_pkg.models" in line


def test_cli_missing_weights_file(tmp_path, capsys):
    path = write_model_file(tmp_path)
    argv = ["compile", f"{path}:make", "--input-shape", "4,1,8", "-o", str(tmp_path / "o")]
    line = cli_error(capsys, [*argv, "--weights", str(tmp_path / "absent.pt")])
    assert "absent.pt" in line and "does not exist" in line


def test_cli_checkpoint_that_does_not_fit(tmp_path, capsys):
    path = write_model_file(tmp_path)
    ckpt = tmp_path / "wrong.pt"
    torch.save({"0.weight": torch.zeros(5, 8), "extra": torch.zeros(1)}, ckpt)
    argv = ["compile", f"{path}:make", "--input-shape", "4,1,8", "-o", str(tmp_path / "o")]
    line = cli_error(capsys, [*argv, "--weights", str(ckpt)])
    assert "wrong.pt" in line
    assert "missing keys 0.bias" in line
    assert "unexpected keys extra" in line
    assert "0.weight has shape [5, 8] in the file, the model needs [4, 8]" in line
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_cli_checkpoint_with_code_is_refused(tmp_path, capsys):
    path = write_model_file(tmp_path)
    ckpt = tmp_path / "pickled.pt"
    torch.save({"0.weight": torch.zeros(4, 8), "fn": print}, ckpt)  # not weights_only-safe
    argv = ["compile", f"{path}:make", "--input-shape", "4,1,8", "-o", str(tmp_path / "o")]
    line = cli_error(capsys, [*argv, "--weights", str(ckpt)])
    assert "pickled.pt" in line


def test_cli_unknown_backend(tmp_path, capsys):
    path = write_model_file(tmp_path)
    argv = ["compile", f"{path}:make", "--input-shape", "4,1,8", "-o", str(tmp_path / "o")]
    line = cli_error(capsys, [*argv, "--backend", "tpu"])
    assert "'tpu'" in line and "reference" in line


@pytest.mark.parametrize(
    ("shape", "message"),
    [("8,x,64", "integers"), ("8,64", "at least 3"), ("8,0,64", ">= 1")],
)
def test_cli_bad_input_shape(tmp_path, capsys, shape, message):
    path = write_model_file(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["ir", f"{path}:make", "--input-shape", shape])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_run_missing_artifact(tmp_path, capsys):
    line = cli_error(capsys, ["run", str(tmp_path / "none"), "--input", "x.npy", "-o", "y.npy"])
    assert "none" in line


def test_cli_run_wrong_input_shape(tmp_path, capsys, cm):
    out = cm.save(tmp_path / "art")
    np.save(tmp_path / "x.npy", np.zeros((4, 2, 9), dtype=np.float32))
    line = cli_error(
        capsys, ["run", str(out), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]
    )
    assert "expected [T, B, 8]" in line and "got [4, 2, 9]" in line
