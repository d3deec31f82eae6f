"""The on-disk kernel caches: where they live, how a binary gets in, and when it may come out.

The cpu backend loads its cached shared libraries into the process, the cuda
backend its cubins onto the GPU, the jax backend keeps its generated modules
there for people to read. A cached binary is code, so "the file exists, load
it" is not enough. The protocol, in one place for every backend:

- **The user's own, private folder.** ``$SNNCC_CACHE_DIR/<kind>``, else
  ``$XDG_CACHE_HOME/snncc/<kind>``, else ``~/.cache/snncc/<kind>``, or the
  ``cache_dir`` option a user passes (never one an artifact names). It is
  created 0700 and refused when another user owns it or can write to it
  (:func:`snncc.ir.safe_files.private_dir`).
- **Verified before use.** A binary is published under a content-addressed
  name, ``<name>.<sha256[:16]><suffix>``, and then a record ``<name>.json``
  holding its full SHA-256 and size is written (atomically). :func:`lookup`
  re-hashes the file before handing it out: a truncated, overwritten,
  unreadable or unrecorded file is a miss and is rebuilt, never loaded
  (mapping a truncated library is a SIGBUS in every later run).
- **Safe under concurrency.** Builds of one entry take an ``flock`` on
  ``<name>.lock`` and re-check the cache once they hold it, so N processes
  compiling one model build it once and all load it; every build writes its
  own temporary files (``mkstemp``), so no builder reads a file another is
  writing; publishing is a rename, so a process that has a library mapped
  keeps its inode intact when a rebuild publishes a new one.
- **Self-cleaning.** Temporary files of killed builds, and binaries no record
  names any more, are removed once they are an hour old.

``snncc cache info`` and ``snncc cache clear`` use :func:`summary` and :func:`clear`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snncc.errors import BackendError, SnnccError
from snncc.ir import safe_files

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the rename protocol alone keeps it safe
    fcntl = None  # type: ignore[assignment]

#: the cache kinds, each a sub-folder of the cache root
KINDS = ("cpu", "cuda", "jax")
#: prefix of every temporary file a build writes (removed when stale)
TMP_PREFIX = ".snncc-tmp-"
#: age after which a temporary file or an unrecorded binary counts as left over
STALE_SECONDS = 3600.0
RECORD_FORMAT = "snncc-kernel-cache"
_RECORD_LIMIT = 64 << 10
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


def root() -> Path:
    """``$SNNCC_CACHE_DIR``, else ``$XDG_CACHE_HOME/snncc``, else ``~/.cache/snncc``."""
    env = os.environ.get("SNNCC_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "snncc"


def default_dir(kind: str) -> Path:
    """The cache folder of ``kind`` (one of :data:`KINDS`) under :func:`root`."""
    return root() / kind


def folder(kind: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The checked, private cache folder of ``kind`` (created if missing)."""
    path = Path(cache_dir) if cache_dir is not None else default_dir(kind)
    return safe_files.private_dir(path, f"the {kind} kernel cache", BackendError)


# ------------------------------------------------------------------ records
def _sha256(fd: int) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return h.hexdigest(), size
        h.update(chunk)
        size += len(chunk)


def record(where: Path, name: str) -> dict[str, Any] | None:
    """The record of entry ``name``, or None when it is missing or malformed."""
    try:
        raw = safe_files.read_file(where / f"{name}.json", "record", SnnccError, _RECORD_LIMIT)
        doc = safe_files.parse_json(raw, "record", SnnccError, max_depth=4)
    except SnnccError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT:
        return None
    file, digest, size = doc.get("file"), doc.get("sha256"), doc.get("size")
    if not isinstance(file, str) or not isinstance(digest, str) or not isinstance(size, int):
        return None
    stem, sep, rest = file.partition(f"{name}.")
    if stem or not sep or "/" in file or os.sep in file or not _HEX16.match(rest[:16]):
        return None  # a record names only a file of its own entry, in its own folder
    return doc


def verify(path: Path, digest: str, size: int) -> bool:
    """Whether ``path`` is a regular file (not a link) of ``size`` bytes hashing to ``digest``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        got, n = _sha256(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return n == size and got == digest


def lookup(where: Path, name: str) -> Path | None:
    """The verified binary of entry ``name``, or None (missing, damaged or unrecorded)."""
    doc = record(where, name)
    if doc is None:
        return None
    path = where / doc["file"]
    return path if verify(path, doc["sha256"], doc["size"]) else None


def publish(where: Path, name: str, tmp: Path, suffix: str) -> Path:
    """Move the finished build ``tmp`` to its content-addressed name, then record it."""
    fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        digest, size = _sha256(fd)
    finally:
        os.close(fd)
    final = where / f"{name}.{digest[:16]}{suffix}"
    os.replace(tmp, final)
    doc = {"format": RECORD_FORMAT, "version": 1, "file": final.name, "sha256": digest}
    doc["size"] = size
    safe_files.write_file(where / f"{name}.json", json.dumps(doc, indent=1) + "\n")
    return final


def forget(where: Path, name: str) -> None:
    """Drop the record of ``name`` (its binary turned out unusable): the next use rebuilds."""
    (where / f"{name}.json").unlink(missing_ok=True)


@contextlib.contextmanager
def build_lock(where: Path, name: str) -> Iterator[None]:
    """Hold the build lock of entry ``name`` (an ``flock``; released if the process dies)."""
    path = where / f"{name}.lock"
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise BackendError(
            f"cannot open the kernel cache lock {path}: {exc.strerror}; "
            f"{safe_files.os_error_hint(exc)}"
        ) from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def temp_file(where: Path, name: str, suffix: str) -> Path:
    """A new, empty file only this build writes (removed when stale if the build dies)."""
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{name}.", suffix=suffix, dir=where)
    os.close(fd)
    return Path(tmp)


def clean_stale(where: Path, now: float | None = None) -> int:
    """Remove temporary files of dead builds and binaries no record names, once stale."""
    now = time.time() if now is None else now
    names: set[str] = set()
    removed = 0
    try:
        listing = list(os.scandir(where))
    except OSError:
        return 0
    for e in listing:
        if e.name.endswith(".json") and not e.name.startswith("."):
            doc = record(where, e.name[: -len(".json")])
            if doc is not None:
                names.add(doc["file"])
    for e in listing:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if now - st.st_mtime < STALE_SECONDS or e.name in names:
            continue
        if e.name.startswith(TMP_PREFIX) or _is_binary_name(e.name):
            with contextlib.suppress(OSError):
                os.unlink(e.path)
                removed += 1
    return removed


def _is_binary_name(name: str) -> bool:
    """``<entry>.<16 hex><suffix>``: a content-addressed binary of some entry."""
    parts = name.split(".")
    return len(parts) >= 3 and name.startswith("snncc_") and bool(_HEX16.match(parts[-2]))


def get_or_build(
    where: Path,
    name: str,
    suffix: str,
    build: Callable[[Path], None],
    *,
    reject: Path | None = None,
) -> Path:
    """The verified binary of ``name``, built by ``build(tmp_path)`` when missing or damaged.

    ``reject``: a binary that verified but could not be used (it does not load,
    or lacks a symbol): it counts as a miss, its record is dropped and it is
    rebuilt under a new name.
    """
    hit = lookup(where, name)
    if hit is not None and hit != reject:
        return hit
    with build_lock(where, name):
        hit = lookup(where, name)  # another process may have built it while we waited
        if hit is not None and hit != reject:
            return hit
        forget(where, name)
        clean_stale(where)
        tmp = temp_file(where, name, suffix)
        try:
            build(tmp)
            return publish(where, name, tmp, suffix)
        finally:
            tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------ info and clear
def is_ours(name: str) -> bool:
    """Whether a file name in a cache folder is one snncc writes (what ``clear`` may remove)."""
    bare = name.lstrip(".")
    return bare.startswith(("snncc_", "snncc-tmp-")) or bool(re.match(r"model_[0-9a-f]+\.py", bare))


@dataclass
class FolderSummary:
    """What ``snncc cache info`` prints for one kind."""

    kind: str
    path: Path
    exists: bool
    problem: str | None = None
    entries: int = 0
    verified: int = 0
    damaged: list[str] = field(default_factory=list)
    unrecorded: int = 0
    temporary: int = 0
    modules: int = 0
    files: int = 0
    size: int = 0


def summary(kind: str, path: Path | None = None) -> FolderSummary:
    """Count and check the entries of one cache folder (creates nothing)."""
    path = default_dir(kind) if path is None else path
    out = FolderSummary(kind, path, path.is_dir())
    if not out.exists:
        return out
    try:
        safe_files.private_dir(path, f"the {kind} kernel cache", SnnccError)
    except SnnccError as exc:
        out.problem = str(exc)
    recorded: set[str] = set()
    try:
        listing = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as exc:
        out.problem = f"cannot list {path}: {exc.strerror}"
        return out
    for e in listing:
        if not is_ours(e.name):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        out.files += 1
        out.size += st.st_size
        if e.name.startswith(TMP_PREFIX) or e.name.endswith(".tmp"):
            out.temporary += 1
        elif e.name.endswith(".json"):
            name = e.name[: -len(".json")]
            doc = record(path, name)
            out.entries += 1
            if doc is not None and lookup(path, name) is not None:
                out.verified += 1
                recorded.add(doc["file"])
            else:
                out.damaged.append(name)
        elif e.name.startswith("model_") and e.name.endswith(".py"):
            out.modules += 1
    for e in listing:
        if (_is_binary_name(e.name) or e.name.endswith((".so", ".cubin", ".ptx"))) and (
            e.name not in recorded and not e.name.startswith(".")
        ):
            out.unrecorded += 1
    return out


def clear(path: Path) -> tuple[int, int, int]:
    """Remove snncc's files from one cache folder; return (files removed, bytes, others kept).

    Only regular files and links whose names snncc writes are removed (a link
    itself, never what it points to); folders and other files stay.
    """
    removed = size = kept = 0
    try:
        listing = list(os.scandir(path))
    except FileNotFoundError:
        return 0, 0, 0
    except OSError as exc:
        raise BackendError(f"cannot list {path}: {exc.strerror}") from None
    for e in listing:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if not is_ours(e.name) or stat.S_ISDIR(st.st_mode):
            kept += 1
            continue
        try:
            os.unlink(e.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BackendError(
                f"cannot remove {e.path}: {exc.strerror}; {safe_files.os_error_hint(exc)}"
            ) from None
        removed += 1
        size += st.st_size
    return removed, size, kept


class LoadedCode:
    """A mixin for objects that hold code loaded from the cache (a ctypes library, CuPy
    functions): copies share it, pickles refuse it.

    Why share: ``copy.deepcopy(model)`` is how users snapshot a model (the best epoch, an
    EMA or SWA average: ``torch.optim.swa_utils.AveragedModel`` deep-copies it). Loaded code
    never changes, and two programs compiled from one model already share it; its ctypes
    pointers cannot be copied anyway. Why refuse pickles: a pickle could only carry the
    code itself, and snncc loads code from nothing but the user's verified cache. The
    weights (``state_dict``) and the compiled model (``cm.save``) have their own formats.
    """

    def __copy__(self) -> LoadedCode:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> LoadedCode:
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "snncc's compiled kernels are not pickled (torch.save of a whole to_torch() "
            "module, say): save module.state_dict() and load it into the module of a fresh "
            "compile, or save the compiled model with cm.save(dir) and snncc.load(dir)"
        )
