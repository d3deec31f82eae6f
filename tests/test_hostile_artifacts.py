"""Hostile artifacts, links, torn saves and hostile exchange files (the campaign, part 2).

An artifact, an IR folder, a NIR or ONNX file is data from anyone: loading it
must not let it choose paths or options about this machine, read outside
itself, or allocate what it merely declares; saving must be all or nothing
and never write through a link. Each case asserts the exact outcome.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import h5py
import nir
import numpy as np
import onnx
import pytest
import torch
from hostile_helpers import (
    cli,
    cli_error,
    fs_audit,
    outside,
    tiny_input,
    tiny_model,
    tree,
)
from spikingjelly.activation_based import layer, neuron

import snncc
from snncc import api
from snncc.errors import BackendError, CheckpointError, IRError, UnsupportedError
from snncc.exchange.nir_import import from_nir
from snncc.exchange.onnx_import import from_onnx
from snncc.ir import safe_files, serde


@pytest.fixture(scope="module")
def cm():
    return snncc.compile(tiny_model(), tiny_input())


@pytest.fixture(scope="module")
def cm2():
    """Another model with the same input: saved over cm to test torn saves."""
    return snncc.compile(tiny_model(seed=5), tiny_input())


@pytest.fixture
def art(tmp_path, cm) -> Path:
    return cm.save(tmp_path / "art")


def manifest_of(art: Path) -> dict:
    return json.loads((art / "snncc.json").read_text())


def write_manifest(art: Path, doc: dict) -> None:
    (art / "snncc.json").write_text(json.dumps(doc))


def ir_doc(art: Path) -> dict:
    return json.loads((art / "ir" / "ir.json").read_text())


def write_ir(art: Path, doc: dict) -> None:
    (art / "ir" / "ir.json").write_text(json.dumps(doc))


def node_of(doc: dict, op: str) -> dict:
    return next(n for n in doc["graph"]["nodes"] if n["op"] == op)


# ------------------------------------------------------------------ manifest options
@pytest.mark.parametrize(
    ("backend", "option", "value"),
    [
        ("reference", "cache_dir", "/tmp/evil"),
        ("cpu", "cache_dir", "cache"),
        ("jax", "cache_dir", "/tmp/evil-jax"),
        ("cuda", "device", "cuda:7"),
        ("cuda", "cache_dir", "/tmp/evil-cuda"),
        ("reference", "evil_hook", "os.system"),
    ],
)
def test_manifest_may_not_carry_machine_options(art, backend, option, value):
    doc = manifest_of(art)
    doc["backend"], doc["options"] = backend, {option: value}
    write_manifest(art, doc)
    with pytest.raises(CheckpointError, match=rf"option\(s\) '{option}' are not taken from an"):
        snncc.load(art)


def test_cli_run_of_an_artifact_choosing_its_cache_is_one_line(art, tmp_path, capsys):
    doc = manifest_of(art)
    doc["backend"], doc["options"] = "cpu", {"cache_dir": str(art / "cache")}
    write_manifest(art, doc)
    np.save(tmp_path / "x.npy", tiny_input().numpy())
    line = cli_error(
        capsys, ["run", str(art), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y")]
    )
    assert "'cache_dir' are not taken from an artifact" in line
    assert not (art / "cache").exists() and not (tmp_path / "y").exists()


def test_allow_listed_manifest_option_is_used(art, cm):
    doc = manifest_of(art)
    doc["options"] = {"training": False, "requires_grad": False}
    write_manifest(art, doc)
    loaded = snncc.load(art)
    assert loaded.options == {"training": False, "requires_grad": False}
    assert not loaded.program.params["0.weight"].requires_grad
    assert torch.equal(loaded(tiny_input(t=9)), cm(tiny_input(t=9)))


def test_callers_cache_dir_is_used_and_never_saved(tmp_path):
    x = tiny_input()
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    cm = snncc.compile(tiny_model(), x, backend="cpu", cache_dir=str(mine))
    art = cm.save(tmp_path / "art")
    assert manifest_of(art)["options"] == {}
    loaded = snncc.load(art, cache_dir=str(theirs))
    assert loaded.options["cache_dir"] == str(theirs)
    assert torch.equal(loaded(x), cm(x))
    assert any(p.suffix == ".so" for p in theirs.iterdir())


# ------------------------------------------------------------------ reads stay inside
@pytest.fixture
def outside_ir(tmp_path, cm) -> Path:
    """A valid IR folder outside the artifact, for manifests that point at it."""
    return serde.save(cm.ir, tmp_path / "outside")


@pytest.mark.parametrize("ir", ["../outside", "/ABS", "ir/../../outside", ".", ""])
def test_manifest_ir_path_must_stay_inside(art, outside_ir, ir, monkeypatch, tmp_path):
    doc = manifest_of(art)
    doc["ir"] = str(outside_ir) if ir == "/ABS" else ir
    write_manifest(art, doc)
    with fs_audit(monkeypatch, tmp_path) as seen, pytest.raises(CheckpointError, match="'?ir'?"):
        snncc.load(art)
    assert outside(seen, art) == []


def test_linked_ir_folder_is_refused(art, outside_ir, monkeypatch, tmp_path):
    import shutil

    shutil.rmtree(art / "ir")
    (art / "ir").symlink_to(outside_ir)
    with fs_audit(monkeypatch, tmp_path) as seen:
        with pytest.raises(CheckpointError, match=r"IR folder .*ir is a symbolic link"):
            snncc.load(art)
    assert outside(seen, art) == []


def test_linked_manifest_is_refused(art, tmp_path):
    real = tmp_path / "elsewhere.json"
    real.write_text((art / "snncc.json").read_text())
    (art / "snncc.json").unlink()
    (art / "snncc.json").symlink_to(real)
    with pytest.raises(CheckpointError, match=r"snncc.json is a symbolic link"):
        snncc.load(art)


@pytest.mark.parametrize("name", ["ir.json", "weights.safetensors"])
def test_linked_ir_file_is_refused(art, tmp_path, name):
    real = tmp_path / f"elsewhere-{name}"
    real.write_bytes((art / "ir" / name).read_bytes())
    (art / "ir" / name).unlink()
    (art / "ir" / name).symlink_to(real)
    with pytest.raises(CheckpointError, match=rf"{name} is a symbolic link"):
        snncc.load(art)


def test_weights_that_are_a_folder_are_refused(art):
    (art / "ir" / "weights.safetensors").unlink()
    (art / "ir" / "weights.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        snncc.load(art)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("shape", ["B", 9], r"input \[T, B, 9\] float32 does not match the IR's input node"),
        ("dtype", "float64", r"float64 does not match the IR's input node \[T, B, 8\] float32"),
    ],
)
def test_manifest_input_must_match_the_ir(art, field, value, match):
    doc = manifest_of(art)
    doc["input"][field] = value
    write_manifest(art, doc)
    with pytest.raises(CheckpointError, match=match):
        snncc.load(art)


def test_unknown_backend_in_manifest(art):
    doc = manifest_of(art)
    doc["backend"] = "tpu"
    write_manifest(art, doc)
    with pytest.raises(BackendError, match=r"unknown backend 'tpu'"):
        snncc.load(art)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[" * 100_000 + "]" * 100_000, r"nests deeper than 8 levels"),
        ('{"a": ' * 20 + "1" + "}" * 20, r"nests deeper than 8 levels"),
        ("[1, 2]", r"is not an snncc artifact manifest"),
        (" " * (api.MAX_MANIFEST_BYTES + 1), r"more than the 1048576 bytes"),
    ],
    ids=["deep-100k", "deep-20", "a-list", "over-1MiB"],
)
def test_hostile_manifest_text(art, text, match):
    (art / "snncc.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        snncc.load(art)


# ------------------------------------------------------------------ hostile IR files
def _set(doc: dict, path: str, value) -> None:
    *keys, last = path.split(".")
    d = doc
    for k in keys:
        d = node_of(d, k) if k in ("input", "linear", "neuron", "output") else d[k]
    d[last] = value


@pytest.mark.parametrize(
    ("edit", "value", "error", "match"),
    [
        ("neuron.shape", "B,4", IRError, r"shape 'B,4' is not None or a list"),
        ("neuron.attrs", [], IRError, r"attrs and params must be dicts"),
        ("next_id", "x", CheckpointError, r"next_id 'x' must be an int"),
        ("linear.shape", ["B", 10**7, 10**7], IRError, r"more than the 2147483648 snncc"),
        ("neuron.op", "lstm_cell", IRError, r"unknown op 'lstm_cell'"),
        ("meta", [], CheckpointError, r"'meta' and 'params' must be objects"),
    ],
    ids=["shape-string", "attrs-list", "next-id-string", "shape-1e14", "unknown-op", "meta-list"],
)
def test_wrong_typed_ir_fields(art, edit, value, error, match):
    doc = ir_doc(art)
    _set(doc, edit, value)
    write_ir(art, doc)
    with pytest.raises(error, match=match):
        snncc.load(art)


def test_ir_nesting_bomb(art):
    (art / "ir" / "ir.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"IR JSON nests deeper than 64 levels"):
        snncc.load(art)


def test_ir_param_declaring_1e12_elements_is_refused_before_reading(art):
    doc = ir_doc(art)
    doc["params"]["0.weight"]["shape"] = [1_000_000, 1_000_000]
    write_ir(art, doc)
    with pytest.raises(CheckpointError, match=r"'0.weight' declares 1000000000000 elements"):
        snncc.load(art)


def _npz_artifact(art: Path, cm) -> Path:
    (art / "ir" / "weights.safetensors").unlink()
    serde.save(cm.ir, art / "ir", fmt="npz")
    return art / "ir" / "weights.npz"


def test_npz_declaring_1e12_elements_is_refused_before_allocating(art, cm):
    npz = _npz_artifact(art, cm)
    with zipfile.ZipFile(npz, "w") as zf, zf.open("0.weight.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}
        )
    with pytest.raises(CheckpointError, match=r"array '0.weight' declares 1000000000000 elements"):
        snncc.load(art)


def test_npz_array_of_another_shape_is_refused_before_reading(art, cm):
    npz = _npz_artifact(art, cm)
    arrays = dict(np.load(npz))
    arrays["0.weight"] = np.zeros((3, 3), np.float32)
    np.savez(npz, **arrays)
    with pytest.raises(CheckpointError, match=r"'0.weight' is float32\[3, 3\], the IR expects"):
        snncc.load(art)


# ------------------------------------------------------------------ NaN constants in IR files
@pytest.mark.parametrize("backend", ["reference", "cpu", "jax"])
def test_nan_threshold_in_an_ir_file_is_refused_on_every_backend(art, backend):
    doc = ir_doc(art)
    node_of(doc, "neuron")["attrs"]["neuron"]["v_threshold"] = float("nan")
    write_ir(art, doc)
    m = manifest_of(art)
    m["backend"] = backend
    write_manifest(art, m)
    with pytest.raises(IRError, match=r"neuron v_threshold is nan; neuron constants must be"):
        snncc.load(art)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("tau", float("inf"), r"neuron tau is inf"),
        ("v_reset", float("nan"), r"neuron v_reset is nan"),
        ("alpha", float("-inf"), r"neuron alpha is -inf"),
        ("v_init", float("nan"), r"neuron v_init is nan"),
        ("extra", {"beta": float("nan")}, r"neuron extra\['beta'\] is nan"),
    ],
)
def test_non_finite_neuron_constants_in_an_ir_file(art, key, value, match):
    doc = ir_doc(art)
    node_of(doc, "neuron")["attrs"]["neuron"][key] = value
    write_ir(art, doc)
    with pytest.raises(IRError, match=match):
        snncc.load(art)


def test_non_finite_fused_scale_in_an_ir_file(art):
    doc = ir_doc(art)
    node_of(doc, "neuron")["attrs"]["prologue"] = [{"kind": "scale", "op": "mul", "value": 1e400}]
    write_ir(art, doc)
    with pytest.raises(IRError, match=r"attrs.prologue\[0\].*is not finite"):
        snncc.load(art)


def test_nan_in_a_neuron_param_array(tmp_path):
    from safetensors.numpy import load_file, save_file

    net = torch.nn.Sequential(
        layer.Linear(8, 4, step_mode="m"), neuron.ParametricLIFNode(step_mode="m")
    ).eval()
    art = snncc.compile(net, tiny_input()).save(tmp_path / "art")
    w = load_file(str(art / "ir" / "weights.safetensors"))
    w["1.w"] = np.full_like(w["1.w"], np.nan)
    save_file(w, str(art / "ir" / "weights.safetensors"))
    with pytest.raises(IRError, match=r"param w='1.w' holds non-finite values"):
        snncc.load(art)


def test_nan_placeholder_for_a_per_neuron_threshold_still_runs(tmp_path):
    """NaN where a node param replaces the constant is the frontends' placeholder: fine."""
    g = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type={"input": np.array([2])}),
            "fc": nir.Affine(weight=np.ones((3, 2), np.float32), bias=np.zeros(3, np.float32)),
            "lif": nir.LIF(
                tau=np.full(3, 2e-3),
                r=np.ones(3),
                v_leak=np.full(3, 0.1),
                v_threshold=np.array([0.5, 1.0, 1.5]),
                v_reset=np.zeros(3),
            ),
            "out": nir.Output(output_type={"output": np.array([3])}),
        },
        edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")],
        type_check=False,
    )
    graph = from_nir(g, dt=1e-3)
    spec = node_of(json.loads(serde.to_json(graph)), "neuron")["attrs"]["neuron"]
    assert spec["v_threshold"] != spec["v_threshold"]  # NaN placeholder
    art = snncc.compile_graph(graph).save(tmp_path / "art")
    y = snncc.load(art)(torch.ones(6, 1, 2))
    assert y.shape == (6, 1, 3) and 0 < int(y.sum()) < y.numel()


# ------------------------------------------------------------------ writes through links
def test_save_to_a_linked_folder_is_refused(cm, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(CheckpointError, match=r"link: it is a symbolic link; give the real folder"):
        cm.save(tmp_path / "link")
    assert list(target.iterdir()) == []


def test_save_to_an_existing_file_is_refused(cm, tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(CheckpointError, match=r"exists and is not a folder"):
        cm.save(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "mine"


@pytest.mark.parametrize(
    "planted",
    ["snncc.json", "source", "ir", "ir/ir.json.tmp", "ir/ir.json", "source/program.txt"],
)
def test_links_planted_in_an_artifact_are_never_written_through(art, cm2, tmp_path, planted):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "program.txt").write_text("victim's file")
    (victim / "ir.json").write_text("victim's ir")
    before = tree(victim)
    link = art / planted
    if link.is_dir():
        import shutil

        shutil.rmtree(link)
    elif link.exists():
        link.unlink()
    target = victim if planted in ("source", "ir") else victim / Path(planted).name
    if planted == "ir/ir.json.tmp":
        target = victim / "ir.json"
    link.symlink_to(target)
    cm2.save(art)
    assert tree(victim) == before
    assert not (art / planted).is_symlink() or planted == "ir/ir.json.tmp"
    assert not os.path.lexists(art / "ir" / "ir.json.tmp")
    assert torch.equal(snncc.load(art)(tiny_input()), cm2(tiny_input()))


def test_serde_save_into_a_linked_folder_is_refused(cm, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(CheckpointError, match=r"IR folder .*link is a symbolic link"):
        serde.save(cm.ir, tmp_path / "link")
    assert list((tmp_path / "real").iterdir()) == []


def test_serde_save_replaces_a_stale_linked_weights_file(cm, tmp_path):
    d = serde.save(cm.ir, tmp_path / "ir")
    victim = tmp_path / "victim.npz"
    victim.write_bytes(b"victim")
    (d / "weights.npz").symlink_to(victim)
    serde.save(cm.ir, d)
    assert victim.read_bytes() == b"victim" and not os.path.lexists(d / "weights.npz")


def test_save_writes_nothing_outside_the_artifact(cm, tmp_path, monkeypatch):
    out = tmp_path / "art"
    cm.save(out)
    with fs_audit(monkeypatch, tmp_path) as seen:
        cm.save(out)
    stray = [
        (op, p)
        for op, p in outside(seen, out)
        if not Path(p).relative_to(tmp_path).parts[0].startswith(".art.snncc-")
    ]
    assert seen and stray == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@pytest.mark.parametrize("fmt", ["onnx", "nir"])
def test_export_over_a_link_replaces_the_link(art, tmp_path, capsys, fmt):
    victim = tmp_path / "victim"
    victim.write_text("victim")
    out = tmp_path / f"m.{fmt}"
    out.symlink_to(victim)
    argv = ["export", str(art), "--format", fmt, "-o", str(out)]
    rc, _, _ = cli(capsys, [*argv, *(["--dt", "1e-3"] if fmt == "nir" else [])])
    assert rc == 0 and victim.read_text() == "victim" and not out.is_symlink()
    back = from_onnx(out) if fmt == "onnx" else from_nir(out, dt=1e-3)
    assert len(back) == 4


def test_run_output_over_a_link_replaces_the_link(art, cm, tmp_path, capsys):
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"victim")
    out = tmp_path / "y.npy"
    out.symlink_to(victim)
    np.save(tmp_path / "x.npy", tiny_input().numpy())
    assert (
        cli(capsys, ["run", str(art), "--input", str(tmp_path / "x.npy"), "-o", str(out)])[0] == 0
    )
    assert victim.read_bytes() == b"victim" and not out.is_symlink()
    np.testing.assert_array_equal(np.load(out), cm(tiny_input()).detach().numpy())


# ------------------------------------------------------------------ interrupted saves
def _fail_on(monkeypatch, name_part: str, exc: BaseException) -> None:
    real = safe_files.write_file

    def failing(path, data, **kw):
        if name_part in str(path):
            raise exc
        return real(path, data, **kw)

    monkeypatch.setattr(api, "write_file", failing)


@pytest.mark.parametrize(
    ("where", "exc", "raised"),
    [
        ("snncc.json", OSError(28, "No space left on device"), CheckpointError),
        ("program.txt", OSError(5, "Input/output error"), CheckpointError),
        ("program.txt", KeyboardInterrupt(), KeyboardInterrupt),
    ],
    ids=["manifest-ENOSPC", "source-EIO", "source-ctrl-c"],
)
def test_interrupted_overwrite_leaves_the_old_artifact(
    art, cm, cm2, tmp_path, monkeypatch, where, exc, raised
):
    (art / "notes.txt").write_text("the user's")
    before = tree(art)
    _fail_on(monkeypatch, where, exc)
    with pytest.raises(raised):
        cm2.save(art)
    assert tree(art) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary folder left
    monkeypatch.undo()
    assert torch.equal(snncc.load(art)(tiny_input()), cm(tiny_input()))


def test_interrupted_ir_write_leaves_the_old_artifact(art, cm, cm2, tmp_path, monkeypatch):
    before = tree(art)
    real = serde.save

    def half(graph, directory, **kw):
        real(graph, directory, **kw)
        (Path(directory) / "ir.json").write_text("{torn")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(serde, "save", half)
    with pytest.raises(CheckpointError, match=r"cannot save the artifact to .*Input/output error"):
        cm2.save(art)
    assert tree(art) == before


def test_interrupted_first_save_leaves_nothing(cm, tmp_path, monkeypatch):
    _fail_on(monkeypatch, "snncc.json", OSError(28, "No space left on device"))
    with pytest.raises(CheckpointError, match="No space left on device"):
        cm.save(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_killed_save_leaves_the_old_artifact_and_its_leftovers_are_cleaned(art, cm, tmp_path):
    """A process killed mid-save (os._exit while writing the manifest)."""
    before = tree(art)
    code = (
        "import os, sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import snncc\n"
        "from snncc import api\n"
        "from hostile_helpers import tiny_model, tiny_input\n"
        "real = api.write_file\n"
        "def dying(path, data, **kw):\n"
        "    if str(path).endswith('snncc.json'): os._exit(9)\n"
        "    return real(path, data, **kw)\n"
        "api.write_file = dying\n"
        "snncc.compile(tiny_model(seed=5), tiny_input()).save(sys.argv[1])\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(art)], capture_output=True, text=True, timeout=240
    )
    assert res.returncode == 9, res.stderr[-2000:]
    assert tree(art) == before
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".art.snncc-new-")]
    old = os.stat(left).st_mtime - 7200
    os.utime(left, (old, old))
    cm.save(art)  # the next save removes what a save that died over an hour ago left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_overwrite_without_an_atomic_exchange_keeps_user_files(art, cm2, tmp_path, monkeypatch):
    """Where renameat2 is missing, two renames: still complete, user files carried over."""
    (art / "notes.txt").write_text("the user's")
    monkeypatch.setattr(api, "exchange_dirs", lambda a, b: False)
    cm2.save(art)
    assert (art / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert torch.equal(snncc.load(art)(tiny_input()), cm2(tiny_input()))


def test_failed_carry_over_keeps_the_users_files_and_says_where(art, cm2, tmp_path, monkeypatch):
    """The new artifact is in place; moving the user's own file over fails: it is kept, and
    the error names the folder it is in (nothing of the user's is ever deleted)."""
    (art / "notes.txt").write_text("the user's")
    real = os.rename

    def failing(src, dst, *a, **k):
        if str(src).endswith("notes.txt"):
            raise OSError(5, "Input/output error")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(CheckpointError, match=r"moving your other files .* they are in .*\.art"):
        cm2.save(art)
    monkeypatch.undo()
    (kept,) = [p for p in tmp_path.iterdir() if p.name.startswith(".art.snncc-")]
    assert (kept / "notes.txt").read_text() == "the user's"
    assert torch.equal(snncc.load(art)(tiny_input()), cm2(tiny_input()))


def test_concurrent_saves_of_two_models_never_mix(art, cm, cm2):
    """Two threads saving different models over one artifact, 6 times each: whatever wins,
    the artifact is one of them, whole (manifest, IR and weights of the same save)."""
    errors: list[BaseException] = []

    def saver(model) -> None:
        try:
            for _ in range(6):
                model.save(art)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(m,)) for m in (cm, cm2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    y = snncc.load(art)(tiny_input())
    assert torch.equal(y, cm(tiny_input())) or torch.equal(y, cm2(tiny_input()))
    assert sorted(p.name for p in art.parent.iterdir()) == ["art"]


# ------------------------------------------------------------------ hostile NIR files
def _nir_file(path: Path, **lif) -> Path:
    fields = {
        "tau": np.full(3, 2e-3),
        "r": np.ones(3),
        "v_leak": np.zeros(3),
        "v_threshold": np.ones(3),
        "v_reset": np.zeros(3),
        **lif,
    }
    g = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type={"input": np.array([2])}),
            "fc": nir.Affine(weight=np.ones((3, 2), np.float32), bias=np.zeros(3, np.float32)),
            "lif": nir.LIF(**fields),
            "out": nir.Output(output_type={"output": np.array([3])}),
        },
        edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")],
        type_check=False,
    )
    nir.write(str(path), g)
    return path


def test_nir_external_link_to_another_file_is_refused(tmp_path):
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["w"] = np.full((3, 2), 42.0, np.float32)
    path = _nir_file(tmp_path / "m.nir")
    with h5py.File(path, "r+") as f:
        del f["node/nodes/fc/weight"]
        f["node/nodes/fc/weight"] = h5py.ExternalLink(str(secret), "/w")
    with pytest.raises(CheckpointError, match=r"fc/weight is an HDF5 external link to .*secret"):
        from_nir(path, dt=1e-3)


def test_nir_soft_link_is_refused(tmp_path):
    path = _nir_file(tmp_path / "m.nir")
    with h5py.File(path, "r+") as f:
        del f["node/nodes/fc/bias"]
        f["node/nodes/fc/bias"] = h5py.SoftLink("/node/nodes/lif/v_reset")
    with pytest.raises(CheckpointError, match=r"fc/bias is an HDF5 soft link"):
        from_nir(path, dt=1e-3)


def test_nir_dataset_stored_in_another_file_is_refused(tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.full(6, 42.0, np.float32).tobytes())
    path = _nir_file(tmp_path / "m.nir")
    with h5py.File(path, "r+") as f:
        del f["node/nodes/fc/weight"]
        f["node/nodes/fc"].create_dataset(
            "weight", shape=(3, 2), dtype="<f4", external=[(str(raw), 0, 24)]
        )
    with pytest.raises(CheckpointError, match=r"dataset .*fc/weight keeps its data in other"):
        from_nir(path, dt=1e-3)


def test_nir_virtual_dataset_is_refused(tmp_path):
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f["w"] = np.full((3, 2), 42.0, np.float32)
    path = _nir_file(tmp_path / "m.nir")
    layout = h5py.VirtualLayout(shape=(3, 2), dtype="<f4")
    layout[:] = h5py.VirtualSource(str(src), "w", shape=(3, 2))
    with h5py.File(path, "r+") as f:
        del f["node/nodes/fc/weight"]
        f["node/nodes/fc"].create_virtual_dataset("weight", layout)
    with pytest.raises(CheckpointError, match=r"fc/weight is a virtual dataset"):
        from_nir(path, dt=1e-3)


def test_nir_nesting_bomb_is_refused(tmp_path):
    path = _nir_file(tmp_path / "m.nir")
    with h5py.File(path, "r+") as f:
        g = f["node/nodes/fc"]
        for i in range(3000):
            g = g.create_group(f"g{i % 10}")
    with pytest.raises(CheckpointError, match=r"groups nest deeper than 32 levels"):
        from_nir(path, dt=1e-3)


def test_nir_dataset_declaring_1e12_elements_is_refused_before_reading(tmp_path):
    path = _nir_file(tmp_path / "m.nir")
    with h5py.File(path, "r+") as f:
        del f["node/nodes/fc/weight"]
        f["node/nodes/fc"].create_dataset(
            "weight", shape=(10**6, 10**6), dtype="<f4", chunks=(1, 1024), compression="gzip"
        )
    assert path.stat().st_size < 1 << 20  # declared, never written
    with pytest.raises(CheckpointError, match=r"fc/weight declares 1000000000000 elements"):
        from_nir(path, dt=1e-3)


def test_nir_hard_link_explosion_is_refused(tmp_path):
    """2^20 paths through 20 groups: refused at the first object reached twice."""
    path = _nir_file(tmp_path / "m.nir")
    with h5py.File(path, "r+") as f:
        g = f["node/nodes/fc"].create_group("bomb")
        for _ in range(20):
            nxt = f.create_group(f"/pool/{len(f.get('/pool', {}))}")
            g["a"], g["b"] = nxt, nxt
            g = nxt
    with pytest.raises(
        CheckpointError, match=r"fc/bomb(/a)+/b is a second hard link to an object already read"
    ):
        from_nir(path, dt=1e-3)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("tau", np.array([2e-3, np.nan, 2e-3]), r"its tau hold NaN or infinity"),
        ("v_threshold", np.full(3, np.inf), r"its v_threshold hold NaN or infinity"),
        ("v_reset", np.full(3, np.nan), r"its v_reset hold NaN or infinity"),
    ],
)
def test_nir_non_finite_neuron_fields(tmp_path, field, value, match):
    path = _nir_file(tmp_path / "m.nir", **{field: value})
    with pytest.raises(UnsupportedError, match=rf"NIR node 'lif' \(LIF\): {match}"):
        from_nir(path, dt=1e-3)


def test_nir_file_that_is_fine_still_imports(tmp_path):
    graph = from_nir(_nir_file(tmp_path / "m.nir"), dt=1e-3)
    y = snncc.compile_graph(graph)(torch.ones(5, 1, 2))
    assert y.shape == (5, 1, 3) and int(y.sum()) > 0


# ------------------------------------------------------------------ hostile ONNX files
@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, cm) -> onnx.ModelProto:
    from snncc.exchange.onnx_export import to_onnx

    return to_onnx(cm.ir)


def test_onnx_external_data_is_refused(tmp_path, onnx_model):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.full(32, 42.0, np.float32).tobytes())
    m = onnx.ModelProto()
    m.CopyFrom(onnx_model)
    t = next(t for t in m.graph.initializer if list(t.dims) == [4, 8])
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "secret.bin"), ("offset", "0"), ("length", "128")):
        t.external_data.add(key=k, value=v)
    onnx.save_model(m, str(tmp_path / "m.onnx"))
    with pytest.raises(CheckpointError, match=r"keeps tensor data in other files"):
        from_onnx(tmp_path / "m.onnx")


def test_onnx_metadata_nesting_bomb_is_refused(tmp_path, onnx_model):
    m = onnx.ModelProto()
    m.CopyFrom(onnx_model)
    prop = next(p for p in m.metadata_props if p.key == "snncc.graph")
    prop.value = "[" * 50_000 + "]" * 50_000
    onnx.save_model(m, str(tmp_path / "m.onnx"))
    with pytest.raises(CheckpointError, match=r"nests deeper than 64 levels"):
        from_onnx(tmp_path / "m.onnx")
