"""Wrong states, silent casts, OS errors, resource bombs, forged names, NaN models, CLI order
(the campaign, part 3; see hostile_helpers.py).

Every case is a mistake or an attack a user can make with the CLI or the API;
each asserts the exact outcome: the one-line error naming the problem (the
CLI: status 2, one ``snncc: error:`` line, no traceback), or the right result.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import snntorch as snt
import torch
from hostile_helpers import N_IN, cli, cli_error, npy_header_only, tiny_input, tiny_model
from spikingjelly.activation_based import layer, neuron

import snncc
from snncc import cli as cli_module
from snncc.errors import IRError, ShapeError, UnsupportedError
from snncc.ir.dot import to_dot
from snncc.ir.printer import format_graph

BACKENDS = ["reference", "cpu", "jax"]


def two_layer() -> torch.nn.Sequential:
    torch.manual_seed(2)
    return torch.nn.Sequential(
        layer.Linear(N_IN, 6, step_mode="m"),
        neuron.LIFNode(step_mode="m"),
        layer.Linear(6, 3, step_mode="m"),
        neuron.LIFNode(step_mode="m"),
    ).eval()


class Syn(torch.nn.Module):
    """snnTorch Synaptic (state v and i), one step per call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.fc = torch.nn.Linear(N_IN, 4)
        self.syn = snt.Synaptic(alpha=0.8, beta=0.9, init_hidden=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.syn(self.fc(x))


_COMPILED: dict = {}


def compiled(backend: str, which: str = "tiny"):
    key = (backend, which)
    if key not in _COMPILED:
        model = {"tiny": tiny_model, "two": two_layer, "syn": Syn}[which]()
        _COMPILED[key] = snncc.compile(model, tiny_input(), backend=backend)
    return _COMPILED[key]


def state_of(backend: str, which: str = "tiny", t: int = 3, b: int = 2):
    x = tiny_input(t=t, b=b)
    if backend == "jax":
        x = x.numpy()
    return compiled(backend, which).run(x)[1]


# ------------------------------------------------------------------ wrong states
@pytest.mark.parametrize("backend", BACKENDS)
def test_state_of_another_model_is_refused(backend):
    foreign = state_of(backend, "two")
    with pytest.raises(ShapeError, match=r"state has entries for 4, which hold no state in this"):
        compiled(backend).run(tiny_input(), foreign)


def test_state_lacking_a_node_is_refused():
    st = state_of("reference", "two")
    del st[4]
    with pytest.raises(ShapeError, match=r"state lacks node %4 \(neuron '3'\)"):
        compiled("reference", "two").run(tiny_input(), st)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_state_lacking_a_variable_is_refused(backend):
    st = state_of(backend, "syn")
    (n,) = st
    del st[n]["i"]
    with pytest.raises(ShapeError, match=r"lacks 'i'; this node keeps \['v', 'i'\]"):
        compiled(backend, "syn").run(tiny_input(), st)


def test_state_with_an_unknown_variable_is_refused():
    st = state_of("reference")
    st[2]["w"] = st[2]["v"].clone()
    with pytest.raises(ShapeError, match=r"has unknown variables \['w'\]"):
        compiled("reference").run(tiny_input(), st)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_of_another_batch_size_is_refused(backend):
    st = state_of(backend, b=5)
    with pytest.raises(ShapeError, match=r"state\[2\]\['v'\] .* has shape \[5, 4\]; this input"):
        compiled(backend).run(tiny_input(b=2), st)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_numpy_state_on_a_torch_backend_is_refused(backend):
    st = {2: {"v": state_of(backend)[2]["v"].detach().numpy()}}
    with pytest.raises(ShapeError, match=r"is a numpy.ndarray; this backend carries state as"):
        compiled(backend).run(tiny_input(), st)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_float64_state_is_refused_not_cast(backend):
    st = {2: {"v": state_of(backend)[2]["v"].double()}}
    with pytest.raises(ShapeError, match=r"is float64; this model keeps float32 state .*never"):
        compiled(backend).run(tiny_input(), st)


def test_float64_numpy_state_on_jax_is_refused_not_cast():
    st = {2: {"v": np.asarray(state_of("jax")[2]["v"], np.float64)}}
    with pytest.raises(ShapeError, match=r"is float64; this model keeps float32 state"):
        compiled("jax").run(tiny_input().numpy(), st)


def test_state_on_another_device_is_refused():
    st = {2: {"v": torch.empty(2, 4, device="meta")}}
    with pytest.raises(ShapeError, match=r"is on meta; the input is on cpu"):
        compiled("reference").run(tiny_input(), st)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ([1, 2], r"state must be the dict run\(\) returned .* got list"),
        ({2: [1.0]}, r"state of node %2 \(neuron '1'\) must be a dict of variables"),
        ({"2": {"v": None}}, r"state has entries for '2', which hold no state"),
    ],
    ids=["a-list", "node-not-a-dict", "string-id"],
)
def test_malformed_state_is_refused(state, match):
    with pytest.raises(ShapeError, match=match):
        compiled("reference").run(tiny_input(), state)


def test_empty_state_starts_fresh():
    cm = compiled("reference")
    y, _ = cm.run(tiny_input(), {})
    assert torch.equal(y, cm(tiny_input()))


def test_a_returned_state_continues_on_cpu():
    cm, x = compiled("cpu"), tiny_input(t=6)
    a, st = cm.run(x[:2])
    b, _ = cm.run(x[2:], st)
    assert torch.equal(torch.cat([a, b]), cm(x))


def test_a_reference_state_continues_on_jax():
    x = tiny_input(t=6)
    _, st = compiled("reference").run(x[:2])
    b, _ = compiled("jax").run(x[2:].numpy(), st)
    np.testing.assert_array_equal(b, compiled("reference")(x)[2:].detach().numpy())


# ------------------------------------------------------------------ silent casts
@pytest.mark.parametrize(
    ("dtype", "match"),
    [
        (torch.float16, r"expected float32, got float16"),
        (torch.bfloat16, r"expected float32, got bfloat16"),
        (torch.int64, r"expected float32, got int64"),
        (torch.float64, r"expected float32, got float64"),
    ],
)
def test_inputs_of_another_dtype_are_refused(dtype, match):
    with pytest.raises(ShapeError, match=match):
        compiled("reference")(tiny_input().to(dtype))


@pytest.fixture
def model_file(tmp_path) -> str:
    path = tmp_path / "m.py"
    path.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from hostile_helpers import tiny_model\n"
        "def make():\n"
        "    return tiny_model()\n"
    )
    return f"{path}:make"


@pytest.mark.parametrize("cast", ["double", "bfloat16", "half"])
def test_weights_of_another_dtype_are_refused_not_cast(tmp_path, capsys, model_file, cast):
    ckpt = tmp_path / "ckpt.pt"
    torch.save({k: getattr(v, cast)() for k, v in tiny_model().state_dict().items()}, ckpt)
    line = cli_error(
        capsys,
        ["compile", model_file, "--input-shape", "4,1,8", "--weights", str(ckpt), "-o", "x"],
    )
    want = {"double": "float64", "bfloat16": "bfloat16", "half": "float16"}[cast]
    assert f"0.weight is {want} in the file, the model's is float32" in line
    assert "never casts weights silently" in line


def test_float64_safetensors_weights_are_refused(tmp_path, capsys, model_file):
    from safetensors.torch import save_file

    ckpt = tmp_path / "w.safetensors"
    save_file({k: v.double() for k, v in tiny_model().state_dict().items()}, str(ckpt))
    line = cli_error(
        capsys,
        ["compile", model_file, "--input-shape", "4,1,8", "--weights", str(ckpt), "-o", "x"],
    )
    assert "0.bias is float64 in the file" in line


def test_float64_input_file_to_run_is_refused(tmp_path, capsys):
    art = compiled("reference").save(tmp_path / "art")
    np.save(tmp_path / "x.npy", tiny_input().double().numpy())
    line = cli_error(
        capsys, ["run", str(art), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y")]
    )
    assert "input dtype mismatch: expected float32, got float64" in line
    assert not (tmp_path / "y").exists()


# ------------------------------------------------------------------ OS errors in the CLI
@pytest.fixture
def art(tmp_path):
    return compiled("reference").save(tmp_path / "art")


@pytest.fixture
def x_npy(tmp_path) -> Path:
    np.save(tmp_path / "x.npy", tiny_input().numpy())
    return tmp_path / "x.npy"


def _compile_argv(out: str) -> list[str]:
    return [
        "compile",
        "snncc.examples.digits:load_pretrained",
        "--input-shape",
        "2,1,64",
        "-o",
        out,
    ]


def test_compile_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    line = cli_error(capsys, _compile_argv(str(tmp_path / "f")))
    assert "cannot save to" in line and "exists and is not a folder" in line
    assert (tmp_path / "f").read_text() == "mine"


def test_compile_output_under_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    line = cli_error(capsys, _compile_argv(str(tmp_path / "f" / "out")))
    assert "cannot save the artifact to" in line and "Not a directory" in line


def test_compile_output_in_a_place_nobody_may_write(capsys):
    line = cli_error(capsys, _compile_argv("/sys/snncc-out"))
    assert "cannot save the artifact to /sys/snncc-out" in line
    assert "choose a folder you can write to" in line


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("folder", "is a folder; name a file to write"),
        ("under-file", "cannot create the folder of output"),
        ("sys", "cannot write output /sys/y.npy"),
    ],
)
def test_run_output_paths(tmp_path, capsys, art, x_npy, kind, match):
    (tmp_path / "f").write_text("x")
    out = {"folder": tmp_path, "under-file": tmp_path / "f" / "y.npy", "sys": "/sys/y.npy"}[kind]
    line = cli_error(capsys, ["run", str(art), "--input", str(x_npy), "-o", str(out)])
    assert match in line


@pytest.mark.parametrize("fmt", ["onnx", "nir"])
def test_export_output_that_is_a_folder(tmp_path, capsys, art, fmt):
    line = cli_error(capsys, ["export", str(art), "--format", fmt, "-o", str(tmp_path)])
    assert "is a folder; name a file to write" in line


def test_export_output_in_a_place_nobody_may_write(capsys, art):
    line = cli_error(capsys, ["export", str(art), "--format", "onnx", "-o", "/sys/m.onnx"])
    assert "cannot write /sys/m.onnx" in line and "choose a folder you can write to" in line


def _write_input(path: Path, kind: str) -> None:
    if kind == "folder":
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(b"\x00not an npy file at all")
    elif kind == "npz":
        with path.open("wb") as fh:  # an .npz under the .npy name
            np.savez(fh, a=np.zeros(3), b=np.zeros(3))
    elif kind == "objects":
        np.save(path, np.array([object(), object()]), allow_pickle=True)
    elif kind == "bomb":
        npy_header_only(path, (10**6, 10**6, 8))
    elif kind == "truncated":
        npy_header_only(path, (5, 2, N_IN))


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("folder", r"is a folder, not a .npy file"),
        ("garbage", r"cannot read input file .* as .npy"),
        ("npz", r"cannot read input file .* as .npy"),
        ("objects", r"holds Python objects; snncc reads numeric arrays"),
        ("bomb", r"declares 8000000000000 elements"),
        ("truncated", r"declares \[5, 2, 8\] float32 but is too short for it"),
    ],
)
def test_run_input_files(tmp_path, capsys, art, kind, match):
    path = tmp_path / "x.npy"
    _write_input(path, kind)
    line = cli_error(capsys, ["run", str(art), "--input", str(path), "-o", str(tmp_path / "y")])
    assert __import__("re").search(match, line), line


def test_weights_path_that_is_a_folder(tmp_path, capsys, model_file):
    line = cli_error(
        capsys,
        ["compile", model_file, "--input-shape", "4,1,8", "--weights", str(tmp_path), "-o", "x"],
    )
    assert f"weights file {tmp_path} does not exist" in line


@pytest.mark.parametrize(
    ("exc", "status", "want"),
    [
        (
            PermissionError(13, "Permission denied", "/data/model"),
            2,
            "snncc: error: Permission denied: /data/model; choose a folder you can write to",
        ),
        (MemoryError(), 2, "snncc: error: out of memory; use a smaller input"),
        (RecursionError(), 2, "snncc: error: an input nests too deeply"),
        (KeyboardInterrupt(), 130, "snncc: interrupted"),
    ],
    ids=["oserror", "memory", "recursion", "ctrl-c"],
)
def test_system_errors_inside_a_command_are_one_line(capsys, monkeypatch, exc, status, want):
    def boom(args):
        raise exc

    monkeypatch.setattr(cli_module, "cmd_ir", boom)
    argv = ["ir", "snncc.examples.digits:load_pretrained", "--input-shape", "2,1,64"]
    rc, out, err = cli(capsys, argv)
    assert rc == status and out == ""
    assert len(err.strip().splitlines()) == 1 and err.strip().startswith(want)


def test_closed_stdout_pipe_is_quiet_in_process(capsys, monkeypatch):
    class Closed:
        def write(self, _):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise ValueError("no fd")

    monkeypatch.setattr(sys, "stdout", Closed())
    rc = cli_module.main(["ir", "snncc.examples.digits:load_pretrained", "--input-shape", "2,1,64"])
    monkeypatch.undo()
    assert rc == 141 and capsys.readouterr().err == ""


def test_closed_stdout_pipe_is_quiet_in_a_real_pipe(tmp_path):
    """snncc ir ... | head: the reader stops after a few bytes; no traceback, status 141.

    The IR printed is far larger than a pipe's buffer (64 KiB on Linux), so the
    writer is still writing when the reader closes: the broken pipe is certain,
    not a race with the writer finishing first.
    """
    model = tmp_path / "deep.py"
    model.write_text(
        "import torch\n"
        "def make():\n"
        "    return torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(600)])\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snncc.cli",
            "ir",
            f"{model}:make",
            "--input-shape",
            "2,1,4",
            "--format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.read(64)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=240) == 141 and err == ""


# ------------------------------------------------------------------ resource bombs
@pytest.mark.parametrize(
    "shape", ["10000000000,1,64", "8,1000000,1000000"], ids=["T=1e10", "features=1e12"]
)
def test_input_shape_beyond_the_element_limit(capsys, shape):
    argv = ["compile", "snncc.examples.digits:load_pretrained", "--input-shape", shape, "-o", "x"]
    with pytest.raises(SystemExit) as info:
        cli_module.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "snncc allocates for one array; tracing needs only a few steps" in err


# ------------------------------------------------------------------ forged names
def _graph_named(name: str):
    g = compiled("reference").ir.copy()
    n = next(iter(g.iter_ops("neuron")))
    g.node(n)["name"] = name
    return g, n


def test_newline_in_a_node_name_cannot_forge_a_text_ir_line():
    g, n = _graph_named("1\n%9 = input[index=0]() : f32[B,8]  # forged")
    text = format_graph(g)
    assert not any(line.startswith("%9 = ") for line in text.splitlines())
    assert len([ln for ln in text.splitlines() if ln.startswith("%")]) == len(g)
    assert '# "1\\n%9 = input[index=0]() : f32[B,8]  # forged"' in text


def test_quote_and_newline_in_a_node_name_are_escaped_in_dot():
    g, n = _graph_named('a"b\n}\ndigraph evil {')
    lines = to_dot(g).splitlines()
    assert 'a\\"b\\n}\\ndigraph evil {' in "\n".join(lines)
    assert lines[0] == 'digraph "snncc" {' and lines[-1] == "}"
    assert not any(ln.startswith("digraph evil") for ln in lines)
    assert all(ln.endswith((";", "{", "}")) for ln in lines)  # no statement split by the name


def test_newline_in_a_param_name_is_escaped():
    g = compiled("reference").ir.copy()
    lin = next(iter(g.iter_ops("linear")))
    g.params["evil\nname"] = g.params.pop("0.weight")
    g.node(lin)["params"]["weight"] = "evil\nname"
    assert 'weight="evil\\nname"[4,8]' in format_graph(g)


def test_newline_in_a_meta_key_is_escaped():
    g = compiled("reference").ir.copy()
    g.meta["k\n%1 = forged"] = 1
    text = format_graph(g)
    assert '# meta: "k\\n%1 = forged"=1' in text
    assert not any(line.startswith("%1 = forged") for line in text.splitlines())


def test_newline_in_a_name_stays_one_cli_error_line(tmp_path, capsys, x_npy):
    art = compiled("reference").save(tmp_path / "art")
    doc = json.loads((art / "ir" / "ir.json").read_text())
    node = next(nd for nd in doc["graph"]["nodes"] if nd["op"] == "neuron")
    node["name"] = "sn\nsnncc: error: forged"
    node["attrs"]["neuron"]["tau"] = float("nan")
    (art / "ir" / "ir.json").write_text(json.dumps(doc))
    line = cli_error(capsys, ["run", str(art), "--input", str(x_npy), "-o", str(tmp_path / "y")])
    assert "neuron tau is nan" in line and "'sn\\nsnncc: error: forged'" in line


def test_a_module_name_fx_cannot_write_is_one_error(tmp_path, capsys):
    path = tmp_path / "quoted.py"
    path.write_text(
        "import torch\n"
        "from spikingjelly.activation_based import layer, neuron\n"
        "def make():\n"
        "    m = torch.nn.Sequential()\n"
        "    m.add_module('a\"b', layer.Linear(8, 4, step_mode='m'))\n"
        "    m.add_module('sn', neuron.LIFNode(step_mode='m'))\n"
        "    return m\n"
    )
    line = cli_error(capsys, ["compile", f"{path}:make", "--input-shape", "4,1,8", "-o", "x"])
    assert "module name 'a\"b' cannot be traced" in line


# ------------------------------------------------------------------ NaN constants in models
@pytest.mark.parametrize(
    ("backend", "th", "match"),
    [
        ("jax", float("nan"), r"module '1' \(.*LIFNode\): neuron v_threshold is nan"),
        ("reference", float("inf"), r"module '1' \(.*LIFNode\): neuron v_threshold is inf"),
        ("cpu", float("-inf"), r"module '1' \(.*LIFNode\): neuron v_threshold is -inf"),
    ],
)
def test_non_finite_threshold_in_a_model_is_refused(backend, th, match):
    m = torch.nn.Sequential(
        layer.Linear(8, 4, step_mode="m"), neuron.LIFNode(v_threshold=th, step_mode="m")
    ).eval()
    with pytest.raises(UnsupportedError, match=match):
        snncc.compile(m, tiny_input(), backend=backend)


def test_nan_threshold_in_snncc_nn_names_the_module():
    import snncc.nn as snn

    m = torch.nn.Sequential(torch.nn.Linear(8, 4), snn.LIF(v_threshold=float("nan"))).eval()
    with pytest.raises(UnsupportedError) as info:
        snncc.compile(m, tiny_input(), backend="jax")
    assert str(info.value).startswith("module '1' (snncc.nn.LIF): neuron v_threshold is nan")
    assert "tlparse" not in str(info.value) and "\n" not in str(info.value)


def test_nan_threshold_param_in_snntorch_is_refused():
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)
            self.lif = snt.Leaky(beta=0.9, threshold=float("nan"), init_hidden=True)

        def forward(self, x):
            return self.lif(self.fc(x))

    with pytest.raises(IRError, match=r"param threshold='lif.threshold' holds non-finite values"):
        snncc.compile(Net().eval(), tiny_input(), backend="jax")


def test_nan_in_a_nir_file_via_the_cli(tmp_path, capsys):
    import nir

    g = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type={"input": np.array([2])}),
            "lif": nir.LIF(
                tau=np.full(2, np.nan),
                r=np.ones(2),
                v_leak=np.zeros(2),
                v_threshold=np.ones(2),
                v_reset=np.zeros(2),
            ),
            "out": nir.Output(output_type={"output": np.array([2])}),
        },
        edges=[("in", "lif"), ("lif", "out")],
        type_check=False,
    )
    nir.write(str(tmp_path / "m.nir"), g)
    line = cli_error(
        capsys, ["import", str(tmp_path / "m.nir"), "--dt", "1e-3", "-o", str(tmp_path / "a")]
    )
    assert "NIR node 'lif' (LIF): its tau hold NaN or infinity" in line


# ------------------------------------------------------------------ checks before slow work
def test_example_with_an_unknown_backend_fails_before_any_work(capsys, monkeypatch):
    from snncc.examples import digits

    monkeypatch.setattr(digits, "load_pretrained", lambda: pytest.fail("loaded the model"))
    line = cli_error(capsys, ["example", "--backend", "tpu"])
    assert line == "snncc: error: unknown backend 'tpu'; choose one of: cpu, cuda, jax, reference"


def test_example_on_cuda_without_cupy_fails_before_any_work(capsys, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    from snncc.examples import digits

    monkeypatch.setattr(digits, "load_pretrained", lambda: pytest.fail("loaded the model"))
    line = cli_error(capsys, ["example", "--backend", "cuda"])
    assert "CuPy is not installed" in line and 'pip install "snncc[cuda12]"' in line


def test_run_of_a_cuda_artifact_without_cupy_is_one_line(tmp_path, capsys, x_npy):
    import importlib.util

    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    art = snncc.compile(tiny_model(), tiny_input(), backend="cuda").save(tmp_path / "art")
    line = cli_error(capsys, ["run", str(art), "--input", str(x_npy), "-o", str(tmp_path / "y")])
    assert "CuPy is not installed" in line and not (tmp_path / "y").exists()


@pytest.mark.parametrize("command", ["compile", "ir", "import"])
def test_unknown_backend_is_reported_before_the_model_is_read(tmp_path, capsys, command):
    marker = tmp_path / "IMPORTED"
    (tmp_path / "m.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef make(): pass\n")
    spec = f"{tmp_path / 'm.py'}:make"
    argv = {
        "compile": ["compile", spec, "--input-shape", "2,1,8", "-o", str(tmp_path / "o")],
        "ir": ["ir", spec, "--input-shape", "2,1,8"],
        "import": ["import", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "o")],
    }[command]
    line = cli_error(capsys, [*argv, "--backend", "tpu"])
    assert "unknown backend 'tpu'" in line and not marker.exists()


def test_unsupported_layer_message_is_a_summary(tmp_path, capsys):
    (tmp_path / "m.py").write_text(
        "import torch\n"
        "from spikingjelly.activation_based import layer\n"
        "def make():\n"
        "    return torch.nn.Sequential(layer.Linear(8, 4, step_mode='m'), torch.nn.Hardswish())\n"
    )
    line = cli_error(
        capsys, ["compile", f"{tmp_path / 'm.py'}:make", "--input-shape", "2,1,8", "-o", "x"]
    )
    assert "Hardswish" in line and "is not supported" in line and len(line) < 600
    assert "SpikingJelly (" in line and "snncc.frontend.SUPPORTED" in line


def test_import_help_example_runs_as_written(tmp_path, capsys, monkeypatch):
    """Every line of 'snncc import --help's example, in order, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli_module.main(["import", "--help"])
    text = capsys.readouterr().out
    block = text.split("example:")[1].split("\n\n")[0]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
    assert len(lines) >= 5
    for line in lines:
        argv = shlex.split(line)
        if argv[0] == "python":
            exec(argv[2], {})  # noqa: S102 - the help's own one-liner (np.save of x.npy)
            continue
        assert argv[0] == "snncc"
        rc, _, err = cli(capsys, argv[1:])
        assert rc == 0, f"{line}: {err}"
    assert np.load(tmp_path / "y.npy").shape == (8, 4, 10)


def test_wrong_feature_size_is_one_line_without_fx_notes(capsys):
    """The example input does not fit the model: torch's message, located, and nothing of
    fx's 'While executing ... Use tlparse' notes."""
    argv = [
        "compile",
        "snncc.examples.digits:load_pretrained",
        "--input-shape",
        "2,1,65",
        "-o",
        "x",
    ]
    line = cli_error(capsys, argv)
    assert "running the model on the example input failed at module '0'" in line
    # torch's own words for the mismatch (its meta kernel's, as the tracer runs the model
    # on fake tensors): the example's 65 features against the weight's 64
    assert "[2, 65] X [64, 128]" in line or "(2x65 and 64x128)" in line
    assert "tlparse" not in line and "While executing" not in line
