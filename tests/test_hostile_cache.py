"""Hostile, damaged and raced kernel caches (the campaign, part 1; see hostile_helpers.py).

What is checked: a binary is loaded only from the user's own private cache
and only after its recorded content hash matches (a planted library's
constructor never runs); damage of every kind is healed by a rebuild, never a
crash; N processes compiling one kernel at once all get it right; the cache
folder itself is refused when others could write to it; ``snncc cache``.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import queue
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hostile_helpers import build_payload, cli, cli_error, plant_verified, run_python, tiny_input

import snncc
from snncc.backends import kernel_cache
from snncc.backends.cpu import compiler
from snncc.errors import BackendError

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOBODY = 65534


def tiny_source(token: str, value: int = 7) -> tuple[str, str]:
    """A one-function kernel library unique to ``token``: (source, symbol)."""
    symbol = f"snncc_probe_{token}"
    return f'extern "C" int {symbol}() {{ return {value}; }}\n', symbol


def call(lib: ctypes.CDLL, symbol: str) -> int:
    fn = getattr(lib, symbol)
    fn.restype = ctypes.c_int
    return int(fn())


def entry_name(source: str) -> str:
    return f"snncc_{compiler.cache_key(source)[2]}"


def files(where: Path) -> list[str]:
    return sorted(p.name for p in where.iterdir())


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


# ------------------------------------------------------------------ planted binaries
@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> tuple[Path, Path]:
    """(payload library, the marker its constructor writes)."""
    d = tmp_path_factory.mktemp("payload")
    marker = d / "MARKER"
    return build_payload(d / "payload.so", marker, ("snncc_probe_x",)), marker


def test_planted_unrecorded_library_in_own_cache_is_never_loaded(cache, payload):
    """The old attack: snncc_<key>.so planted under the name the key predicts."""
    so, marker = payload
    src, sym = tiny_source("planted1")
    cache.mkdir(mode=0o700)
    (cache / f"{entry_name(src)}.so").write_bytes(so.read_bytes())
    assert call(compiler.load(src, cache, (sym,)), sym) == 7
    assert not marker.exists()


def test_planted_library_with_a_stale_record_is_rebuilt_not_loaded(cache, payload):
    so, marker = payload
    src, sym = tiny_source("planted2")
    compiler.build(src, cache)  # a genuine entry ...
    name = entry_name(src)
    doc = json.loads((cache / f"{name}.json").read_text())
    (cache / doc["file"]).write_bytes(so.read_bytes())  # ... whose binary is swapped
    assert call(compiler.load(src, cache, (sym,)), sym) == 7
    assert not marker.exists()


def test_world_writable_shared_cache_with_forged_record_is_refused(tmp_path, payload, monkeypatch):
    """A shared SNNCC_CACHE_DIR: anyone could plant a library *and* a matching record."""
    so, marker = payload
    shared = tmp_path / "shared"
    (shared / "cpu").mkdir(parents=True)
    os.chmod(shared / "cpu", 0o777)
    src, sym = tiny_source("shared1")
    plant_verified(shared / "cpu", entry_name(src), so)
    monkeypatch.setenv("SNNCC_CACHE_DIR", str(shared))
    with pytest.raises(BackendError, match=r"writable by other users \(mode 777\).*chmod go-w"):
        compiler.load(src, None, (sym,))
    assert not marker.exists()


def test_group_writable_cache_is_refused(cache):
    cache.mkdir()
    os.chmod(cache, 0o770)
    with pytest.raises(BackendError, match=r"writable by other users \(mode 770\)"):
        compiler.build(tiny_source("grp")[0], cache)


def test_sticky_world_writable_folder_as_cache_is_refused(tmp_path):
    """/tmp-like (1777): others cannot delete our files but can add theirs."""
    d = tmp_path / "tmplike"
    d.mkdir()
    os.chmod(d, 0o1777)
    with pytest.raises(BackendError, match=r"mode 1777"):
        compiler.build(tiny_source("sticky")[0], d)


def test_cache_inside_a_world_writable_folder_without_sticky_bit_is_refused(tmp_path):
    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(parent, 0o777)
    with pytest.raises(BackendError, match=r"anyone can write to without the sticky bit"):
        compiler.build(tiny_source("anc")[0], parent / "cache")


@pytest.mark.skipif(not IS_ROOT, reason="needs root to give a folder to another user")
def test_cache_owned_by_another_user_is_refused(tmp_path, payload):
    so, marker = payload
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    src, sym = tiny_source("owner")
    plant_verified(d, entry_name(src), so)
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(BackendError, match=rf"owned by another user \(uid {NOBODY}\)"):
        compiler.load(src, d, (sym,))
    assert not marker.exists()


@pytest.mark.skipif(not IS_ROOT, reason="needs root to give a link to another user")
def test_cache_link_owned_by_another_user_is_refused(tmp_path, payload):
    so, marker = payload
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    src, sym = tiny_source("linkowner")
    plant_verified(target, entry_name(src), so)
    link = tmp_path / "link"
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(BackendError, match=r"symbolic link owned by another user"):
        compiler.load(src, link, (sym,))
    assert not marker.exists()


@pytest.mark.skipif(not IS_ROOT, reason="needs root to give a folder to another user")
def test_cache_inside_another_users_folder_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    mine = theirs / "cache"
    mine.mkdir(mode=0o700)
    with pytest.raises(BackendError, match=r"inside .*theirs, owned by another user"):
        compiler.build(tiny_source("ancowner")[0], mine)


def test_own_link_to_a_private_folder_is_accepted(tmp_path):
    target = tmp_path / "real"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    src, sym = tiny_source("ownlink")
    assert call(compiler.load(src, link, (sym,)), sym) == 7
    assert any(p.suffix == ".so" for p in target.iterdir())


def test_new_cache_folders_are_private(tmp_path, monkeypatch):
    monkeypatch.setenv("SNNCC_CACHE_DIR", str(tmp_path / "a" / "b"))
    compiler.build(tiny_source("mode")[0])
    for d in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "cpu"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_a_cache_path_that_is_a_file_is_one_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(BackendError, match=r"the cpu kernel cache .*file is not a folder"):
        compiler.build(tiny_source("isfile")[0], f)


def test_a_cache_path_under_a_file_is_one_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(BackendError, match=r"cannot create the cpu kernel cache .*Not a directory"):
        compiler.build(tiny_source("underfile")[0], f / "cache")


def test_an_unwritable_cache_location_is_one_clear_error():
    with pytest.raises(BackendError, match=r"cannot create the cpu kernel cache /sys/snncc"):
        compiler.build(tiny_source("sys")[0], "/sys/snncc-cache")


def test_artifact_option_cache_dir_is_never_used(tmp_path, payload):
    """An artifact naming its own cache with a planted, *verified* library in it."""
    so, marker = payload
    cm = snncc.compile(_model(), tiny_input(), backend="cpu", cache_dir=str(tmp_path / "mine"))
    art = cm.save(tmp_path / "art")
    evil = art / "cache"
    evil.mkdir(mode=0o700)
    name = next(p.stem for p in (tmp_path / "mine").glob("*.json"))
    plant_verified(evil, name, so)
    manifest = json.loads((art / "snncc.json").read_text())
    assert "cache_dir" not in manifest["options"]  # never saved ...
    manifest["options"]["cache_dir"] = str(evil)  # ... and refused when forged
    (art / "snncc.json").write_text(json.dumps(manifest))
    with pytest.raises(snncc.CheckpointError, match=r"option\(s\) 'cache_dir' are not taken"):
        snncc.load(art)
    assert not marker.exists()


def _model():
    from hostile_helpers import tiny_model

    return tiny_model()


# ------------------------------------------------------------------ damaged caches
def _damage(where: Path, name: str, how: str) -> None:
    doc = json.loads((where / f"{name}.json").read_text())
    so = where / doc["file"]
    if how == "truncated":
        with so.open("r+b") as fh:
            fh.truncate(so.stat().st_size // 3)
    elif how == "garbage":
        so.write_bytes(os.urandom(so.stat().st_size))
    elif how == "emptied":
        so.write_bytes(b"")
    elif how == "deleted":
        so.unlink()
    elif how == "record-corrupt":
        (where / f"{name}.json").write_text("{not json")
    elif how == "record-deleted":
        (where / f"{name}.json").unlink()
    elif how == "record-escapes":
        doc["file"] = f"../{doc['file']}"
        (where / f"{name}.json").write_text(json.dumps(doc))
    elif how == "record-wrong-hash":
        doc["sha256"] = "0" * 64
        (where / f"{name}.json").write_text(json.dumps(doc))
    elif how == "binary-is-a-link":
        copy = where.parent / "copy.so"
        copy.write_bytes(so.read_bytes())
        so.unlink()
        so.symlink_to(copy)
    elif how == "record-is-a-link":
        copy = where.parent / "record.json"
        copy.write_text(json.dumps(doc))
        (where / f"{name}.json").unlink()
        (where / f"{name}.json").symlink_to(copy)
    else:  # pragma: no cover
        raise AssertionError(how)


DAMAGE = [
    "truncated",
    "garbage",
    "emptied",
    "deleted",
    "record-corrupt",
    "record-deleted",
    "record-escapes",
    "record-wrong-hash",
    "binary-is-a-link",
    "record-is-a-link",
]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_entry_is_rebuilt_and_runs(cache, how):
    """Built (not loaded in this process), damaged, then loaded: rebuilt, correct, verified."""
    src, sym = tiny_source(f"dmg_{how.replace('-', '_')}", 11)
    compiler.build(src, cache)
    name = entry_name(src)
    _damage(cache, name, how)
    assert kernel_cache.lookup(cache, name) is None  # never handed out damaged
    assert call(compiler.load(src, cache, (sym,)), sym) == 11
    assert kernel_cache.lookup(cache, name) is not None  # healed
    assert not (cache / f"{name}.json").is_symlink()


def test_consistent_record_of_a_library_without_the_kernels_is_rebuilt(cache, tmp_path):
    """A record and binary that agree, but the binary is some other library: it lacks the
    kernel's symbol, so it is dropped and rebuilt (not an AttributeError traceback)."""
    src, sym = tiny_source("wrongsym", 5)
    other = build_payload(tmp_path / "other.so", tmp_path / "OTHER_MARKER")
    cache.mkdir(mode=0o700)
    plant_verified(cache, entry_name(src), other)
    assert call(compiler.load(src, cache, (sym,)), sym) == 5


def test_truncated_library_of_a_real_model_heals_in_the_next_process(tmp_path):
    """The SIGBUS of every later run: a cached .so truncated, a new process, right spikes."""
    import shutil

    from hostile_helpers import tiny_model

    x = tiny_input()
    want = snncc.compile(tiny_model(), x)(x)
    cm = snncc.compile(tiny_model(), x, backend="cpu", cache_dir=str(tmp_path / "mine"))
    assert torch.equal(cm(x), want)
    shutil.copytree(tmp_path / "mine", tmp_path / "c")  # new inodes: none mapped here
    for rec in (tmp_path / "c").glob("*.json"):
        so = tmp_path / "c" / json.loads(rec.read_text())["file"]
        with so.open("r+b") as fh:
            fh.truncate(100)
    code = (
        "import sys, torch, snncc\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from hostile_helpers import tiny_model, tiny_input\n"
        "x = tiny_input()\n"
        f"cm = snncc.compile(tiny_model(), x, backend='cpu', cache_dir={str(tmp_path / 'c')!r})\n"
        "print(cm(x).flatten().int().tolist())\n"
    )
    res = run_python(code)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == str(want.flatten().int().tolist())
    assert all(kernel_cache.lookup(tmp_path / "c", r.stem) for r in (tmp_path / "c").glob("*.json"))


def test_stale_leftovers_of_killed_builds_are_cleaned(cache):
    src, sym = tiny_source("stale")
    compiler.build(src, cache)
    old = time.time() - 2 * kernel_cache.STALE_SECONDS
    stale_tmp = cache / f"{kernel_cache.TMP_PREFIX}snncc_dead.abc123.so"
    fresh_tmp = cache / f"{kernel_cache.TMP_PREFIX}snncc_busy.def456.so"
    orphan = cache / "snncc_deadbeefdeadbeefdeadbeef.0123456789abcdef.so"
    for p in (stale_tmp, fresh_tmp, orphan):
        p.write_bytes(b"partial")
    os.utime(stale_tmp, (old, old))
    os.utime(orphan, (old, old))
    compiler.build(tiny_source("stale_next")[0], cache)  # any build cleans
    assert not stale_tmp.exists() and not orphan.exists()
    assert fresh_tmp.exists()  # may be another process's build in progress
    assert kernel_cache.lookup(cache, entry_name(src)) is not None  # recorded ones stay


def test_a_library_is_never_rewritten_in_place(cache):
    """A rebuild publishes a new inode: a process that mapped the old one keeps it intact."""
    src, _ = tiny_source("inode")
    first = compiler.build(src, cache)
    ino, data = first.stat().st_ino, first.read_bytes()
    keep = first.with_name("held-open")
    os.link(first, keep)  # stands for another process's mapping of that inode
    _damage(cache, entry_name(src), "record-wrong-hash")
    second = compiler.build(src, cache)
    assert second.read_bytes() == data and second.stat().st_ino != ino
    assert keep.read_bytes() == data


# ------------------------------------------------------------------ compilers
def test_snncc_cxx_naming_a_missing_compiler_is_an_error(monkeypatch):
    monkeypatch.setenv("SNNCC_CXX", "no-such-compiler-9")
    with pytest.raises(BackendError, match=r"\$SNNCC_CXX=no-such-compiler-9 names no compiler"):
        compiler.find_compiler()


def test_cxx_naming_a_missing_compiler_is_an_error(monkeypatch):
    monkeypatch.delenv("SNNCC_CXX", raising=False)
    monkeypatch.setenv("CXX", "/opt/none/bin/g++")
    with pytest.raises(BackendError, match=r"\$CXX=/opt/none/bin/g\+\+ names no compiler"):
        compiler.find_compiler()


def test_snncc_cxx_naming_a_real_compiler_is_used(monkeypatch):
    real = compiler.find_compiler()
    monkeypatch.setenv("SNNCC_CXX", real)
    monkeypatch.setenv("CXX", "no-such-compiler-9")  # SNNCC_CXX wins
    assert compiler.find_compiler() == real


def test_compiler_failure_names_the_readable_source(cache):
    with pytest.raises(BackendError, match=r"failed on generated kernel .*snncc_\w+\.cpp"):
        compiler.build('extern "C" int broken( { }\n', cache)
    assert not [p for p in cache.iterdir() if p.name.startswith(kernel_cache.TMP_PREFIX)]


# ------------------------------------------------------------------ races
def _race_child(where, source, symbol, barrier, results, index, lock):
    try:
        if not lock:
            kernel_cache.fcntl = None  # this child only: the rename protocol alone
        compiler._loaded.clear()
        barrier.wait(timeout=60)
        results.put((index, call(compiler.load(source, where, (symbol,)), symbol)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put((index, f"{type(exc).__name__}: {exc}"))


def _race(where: Path, source: str, symbol: str, lock: bool, n: int = 8) -> list:
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_race_child, args=(where, source, symbol, barrier, results, i, lock))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return [got[i] for i in range(n)]


def _race_rounds(root: Path, lock: bool, rounds: int) -> str:
    """``rounds`` races on fresh caches under ``root``: "ok", or what went wrong first."""
    compiler.cache_key(tiny_source("warm")[0])  # probes (flags) once, inherited by children
    for r in range(rounds):
        where = root / f"round{r}"
        src, sym = tiny_source(f"race_{int(lock)}_{r}", 1000 + r)
        got = _race(where, src, sym, lock)
        if got != [1000 + r] * 8:
            return f"round {r}: the processes got {got}"
        if kernel_cache.lookup(where, entry_name(src)) is None:
            return f"round {r}: no verified entry"
        libraries = [p.name for p in where.iterdir() if p.suffix == ".so"]
        if len(libraries) != 1:
            return f"round {r}: libraries {libraries}"
        left = [p.name for p in where.iterdir() if p.name.startswith(kernel_cache.TMP_PREFIX)]
        if left:
            return f"round {r}: left behind {left}"
    return "ok"


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a newly spawned interpreter (holding what this module imports).

    Why: a race forks 8 children per round. Forked from a pytest worker that has run
    other modules first (gigabytes of heap), every fork copies the page tables and every
    child's writes copy pages: a round took about 2 s instead of 0.2, and 20 rounds
    47 s of a suite run. The protocol under test is the same from any parent.
    """
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_put_result, args=(results, fn, *args))
    proc.start()
    deadline = time.monotonic() + 600
    while True:
        try:
            got = results.get(timeout=1)
            break
        except queue.Empty:
            if not proc.is_alive() or time.monotonic() > deadline:  # crashed or hung
                proc.kill()
                try:  # a result written just before it ended is still in the pipe
                    got = results.get(timeout=5)
                    break
                except queue.Empty:
                    return f"the fresh process gave no result (exit code {proc.exitcode})"
    proc.join(timeout=60)
    return got


def _put_result(results: Any, fn: Callable[..., Any], *args: Any) -> None:
    try:
        results.put(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize(("lock", "rounds"), [(True, 20), (False, 5)], ids=["flock", "rename"])
def test_eight_processes_compiling_one_kernel_all_succeed_every_round(tmp_path, lock, rounds):
    """8 forked processes race on an empty cache (the compiler real, the source tiny): with
    the lock one builds and 7 wait, 20 rounds; with the rename protocol alone (no flock) all
    8 build into their own temporary files and publish the same bytes, 5 rounds. Every
    process must load a correct library, every round, and nothing may be left behind."""
    assert in_fresh_process(_race_rounds, tmp_path, lock, rounds) == "ok"


def test_eight_processes_heal_one_damaged_entry_at_once(cache):
    src, sym = tiny_source("race_heal", 77)
    compiler.build(src, cache)
    _damage(cache, entry_name(src), "truncated")
    assert _race(cache, src, sym, lock=True) == [77] * 8


def test_eight_processes_compile_one_real_neuron_kernel_at_once(cache):
    """The generated LIF kernels (a real translation unit, about a second to compile)."""
    from snncc.backends.cpu.neuron import NeuronKernel
    from snncc.ir.neuron import NeuronSpec

    spec = NeuronSpec(model="lif", charge="sj_lif_decay_input", tau=3.0, surrogate="atan")
    compiler.cache_key(tiny_source("warm")[0])  # probes once, inherited by the children
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(8), ctx.Queue()

    def child(i: int) -> None:
        compiler._loaded.clear()
        barrier.wait(timeout=60)
        try:
            kernel = NeuronKernel(spec, cache_dir=str(cache))  # builds or loads, checks symbols
            results.put((i, kernel.info.forward_name.startswith("snncc")))
        except BaseException as exc:  # noqa: BLE001
            results.put((i, repr(exc)))

    procs = [ctx.Process(target=child, args=(i,)) for i in range(8)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [got[i] for i in range(8)] == [True] * 8
    assert len(list(cache.glob("*.so"))) == 1 and len(list(cache.glob("*.json"))) == 1


# ------------------------------------------------------------------ snncc cache
def test_cache_info_counts_verified_and_damaged_entries(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SNNCC_CACHE_DIR", str(tmp_path / "root"))
    good, bad = tiny_source("info_good")[0], tiny_source("info_bad")[0]
    compiler.build(good)
    compiler.build(bad)
    _damage(tmp_path / "root" / "cpu", entry_name(bad), "garbage")
    rc, out, _ = cli(capsys, ["cache", "info", "--kind", "cpu"])
    assert rc == 0
    assert f"under {tmp_path / 'root'} (from SNNCC_CACHE_DIR)" in out
    assert "2 entries, 1 verified, 1 damaged" in out


def test_cache_info_reports_an_unsafe_folder(tmp_path, capsys):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    rc, out, _ = cli(capsys, ["cache", "info", "--kind", "cpu", "--cache-dir", str(d)])
    assert rc == 0 and "unsafe, not used:" in out and "writable by other users" in out


def test_cache_clear_removes_only_snncc_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SNNCC_CACHE_DIR", str(tmp_path / "root"))
    compiler.build(tiny_source("clear")[0])
    cpu = tmp_path / "root" / "cpu"
    (cpu / "notes.txt").write_text("mine")
    (cpu / "subdir").mkdir()
    target = tmp_path / "precious.so"
    target.write_text("not snncc's")
    (cpu / "snncc_link.so").symlink_to(target)
    rc, out, _ = cli(capsys, ["cache", "clear"])
    assert rc == 0 and "removed 5 files" in out and "left 2 other" in out
    assert files(cpu) == ["notes.txt", "subdir"]
    assert target.read_text() == "not snncc's"  # a link is removed, never followed


def test_cache_clear_of_an_empty_cache_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SNNCC_CACHE_DIR", str(tmp_path / "none"))
    rc, out, _ = cli(capsys, ["cache", "clear"])
    assert rc == 0 and "nothing to remove" in out


def test_cpu_compile_with_an_unusable_cache_is_one_cli_line(tmp_path, capsys, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("SNNCC_CACHE_DIR", str(f))
    line = cli_error(
        capsys,
        [
            "compile",
            "snncc.examples.digits:load_pretrained",
            "--input-shape",
            "2,1,64",
            "--backend",
            "cpu",
            "-o",
            str(tmp_path / "out"),
        ],
    )
    assert "the cpu kernel cache" in line and "cannot create" in line
    assert not (tmp_path / "out").exists()
