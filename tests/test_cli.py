"""The snncc command line, driven through ``snncc.cli.main`` (no subprocess needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional

from snncc.cli import main, parse_input_shape

MODEL_FILE = """\
import torch
from spikingjelly.activation_based import layer, neuron, surrogate


def make():
    return torch.nn.Sequential(
        layer.Linear(12, 10, step_mode="m"),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), step_mode="m"),
        layer.Linear(10, 3, step_mode="m"),
        neuron.LIFNode(tau=2.0, step_mode="m"),
    )
"""


@pytest.fixture
def model_spec(tmp_path):
    """A model file, plus trained-looking weights saved as a torch checkpoint."""
    path = tmp_path / "mlp.py"
    path.write_text(MODEL_FILE)
    namespace: dict = {}
    exec(compile(MODEL_FILE, str(path), "exec"), namespace)
    torch.manual_seed(3)
    model = namespace["make"]().eval()
    with torch.no_grad():  # weights unlike the factory's init, strong enough to fire
        model[0].weight.mul_(3.0)
        model[2].weight.mul_(3.0)
        model[2].bias.add_(1.5)
    ckpt = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), ckpt)
    return f"{path}:make", str(ckpt), model


def test_compile_then_run_round_trip(tmp_path, capsys, model_spec):
    spec, ckpt, model = model_spec
    out = tmp_path / "art"
    argv = ["compile", spec, "--input-shape", "5,1,12", "--weights", ckpt, "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "backend reference" in printed and str(out) in printed
    manifest = json.loads((out / "snncc.json").read_text())
    assert manifest["backend"] == "reference"
    assert manifest["input"]["shape"] == ["B", 12]

    x = np.random.default_rng(0).uniform(0, 3, size=(7, 4, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    y_path = tmp_path / "y.npy"
    assert main(["run", str(out), "--input", str(tmp_path / "x.npy"), "-o", str(y_path)]) == 0
    assert "[7, 4, 3]" in capsys.readouterr().out
    y = np.load(y_path, allow_pickle=False)

    functional.reset_net(model)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert 0 < want.sum() < want.size
    np.testing.assert_array_equal(y, want)  # the checkpoint's weights, exact spikes


def test_compile_with_backend_options(tmp_path, capsys, model_spec):
    """-O KEY=VALUE reaches the backend, lands in the manifest and is used again on load."""
    spec, ckpt, _ = model_spec
    out = tmp_path / "art"
    argv = ["compile", spec, "--input-shape", "5,1,12", "--weights", ckpt, "--backend", "cpu"]
    opts = ["-O", "recompute=true", "-O", "saved_spike_dtype=float32"]
    assert main([*argv, *opts, "-o", str(out)]) == 0
    manifest = json.loads((out / "snncc.json").read_text())
    assert manifest["options"] == {"recompute": True, "saved_spike_dtype": "float32"}
    import snncc

    prog = snncc.load(out).program
    assert not prog.spike_fed and all(k.info.recompute for k in prog.kernels.values())
    capsys.readouterr()
    assert main([*argv, "-O", "bogus=1", "-o", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "unknown cpu backend option(s) ['bogus']" in err and "recompute" in err
    assert main([*argv, "-O", "recompute=1", "-O", "recompute=0", "-o", str(tmp_path / "b")]) == 2
    assert "given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not KEY=VALUE
        main([*argv, "-O", "recompute", "-o", str(tmp_path / "c")])
    # a value of the wrong type is refused by name, never taken as "truthy"
    for opt, want in (
        ("recompute=no", "cpu backend option recompute='no': expected true or false"),
        ("cache_dir=123", "cpu backend option cache_dir=123: expected a directory path"),
    ):
        assert main([*argv, "-O", opt, "-o", str(tmp_path / "d")]) == 2
        assert want in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "text, want",
    [
        ("recompute=true", ("recompute", True)),
        ("cuda_graph=False", ("cuda_graph", False)),
        ("time_chunks=64", ("time_chunks", 64)),
        ("block_size=none", ("block_size", None)),
        ("alpha=0.5", ("alpha", 0.5)),
        ("precision=tf32", ("precision", "tf32")),
        ("device=cuda:1", ("device", "cuda:1")),
    ],
)
def test_option_values_are_typed(text, want):
    from snncc.cli import parse_option

    assert parse_option(text) == want


def test_compile_jax_and_dump_ir(tmp_path, capsys, model_spec):
    pytest.importorskip("jax")
    spec, ckpt, _ = model_spec
    out, dump = tmp_path / "art", tmp_path / "dump"
    argv = ["compile", spec, "--backend", "jax", "--input-shape", "5,1,12", "-o", str(out)]
    assert main([*argv, "--weights", ckpt, "--dump-ir", str(dump)]) == 0
    assert json.loads((out / "snncc.json").read_text())["backend"] == "jax"
    assert list((out / "source").iterdir())
    passes = sorted(p.name for p in dump.iterdir())
    assert passes[-1].endswith("temporal_fusion.txt")
    assert any("fuse_elementwise" in p for p in passes)  # jax runs all five passes


def test_ir_text(capsys, model_spec):
    spec, _, _ = model_spec
    assert main(["ir", spec, "--input-shape", "4,2,12", "--format", "text"]) == 0
    text = capsys.readouterr().out
    assert text.count("neuron[") == 2
    assert "linear" in text and "f32[B,3]" in text


def test_ir_json(capsys, model_spec):
    spec, _, _ = model_spec
    assert main(["ir", spec, "--input-shape", "4,2,12", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ops = json.dumps(data)
    assert ops.count('"neuron"') >= 2


def test_ir_dot(capsys, model_spec):
    spec, _, _ = model_spec
    assert main(["ir", spec, "--input-shape", "4,2,12", "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.lstrip().startswith("digraph") and "->" in dot


def test_ir_package_spec(capsys):
    argv = ["ir", "snncc.examples.digits:digits_snn", "--input-shape", "8,1,64"]
    assert main(argv) == 0
    assert "f32[B,128]" in capsys.readouterr().out


def test_export_onnx_then_import_round_trip(tmp_path, capsys, model_spec):
    """compile -> export onnx -> import (jax) -> run gives the compiled model's spikes."""
    pytest.importorskip("onnxruntime")
    spec, ckpt, model = model_spec
    art, onnx_file, back = tmp_path / "art", tmp_path / "m.onnx", tmp_path / "back"
    assert (
        main(["compile", spec, "--input-shape", "5,1,12", "--weights", ckpt, "-o", str(art)]) == 0
    )
    assert main(["export", str(art), "--format", "onnx", "-o", str(onnx_file)]) == 0
    assert main(["import", str(onnx_file), "-o", str(back)]) == 0
    assert "imported" in capsys.readouterr().out

    x = np.random.default_rng(1).uniform(0, 3, size=(6, 2, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for name in ("art", "back"):
        argv = ["run", str(tmp_path / name), "--input", str(tmp_path / "x.npy")]
        assert main([*argv, "-o", str(tmp_path / f"{name}.npy")]) == 0
    functional.reset_net(model)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert 0 < want.sum() < want.size
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), want)


def test_export_nir_then_import_round_trip(tmp_path, capsys, model_spec):
    """compile -> export nir (--dt) -> import (--dt) -> run: SpikingJelly's spikes, bit for bit."""
    pytest.importorskip("nir")
    spec, ckpt, model = model_spec
    art, nir_file, back = tmp_path / "art", tmp_path / "m.nir", tmp_path / "back"
    assert (
        main(["compile", spec, "--input-shape", "5,1,12", "--weights", ckpt, "-o", str(art)]) == 0
    )
    assert main(["export", str(art), "--format", "nir", "--dt", "1e-4", "-o", str(nir_file)]) == 0
    assert main(["import", str(nir_file), "-o", str(back)]) == 2  # dt is required
    assert "needs dt" in capsys.readouterr().err
    assert main(["import", str(nir_file), "--dt", "1e-4", "-o", str(back)]) == 0

    x = np.random.default_rng(2).uniform(0, 3, size=(6, 2, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    argv = ["run", str(back), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]
    assert main(argv) == 0
    functional.reset_net(model)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert 0 < want.sum() < want.size
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def test_export_spec_needs_input_shape(capsys, model_spec):
    spec, _, _ = model_spec
    assert main(["export", spec, "--format", "onnx", "-o", "unused.onnx"]) == 2
    assert "--input-shape" in capsys.readouterr().err


def test_import_unknown_suffix(tmp_path, capsys):
    path = tmp_path / "model.bin"
    path.write_bytes(b"junk")
    assert main(["import", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "--format" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["compile", "ir", "run", "export", "import", "example"])
def test_every_command_help_shows_an_example(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out
    assert f"snncc {command}" in out


def test_no_command_prints_usage(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_parse_input_shape():
    assert parse_input_shape("8, 1,64") == (8, 1, 64)
    assert parse_input_shape("4,2,2,34,34") == (4, 2, 2, 34, 34)
