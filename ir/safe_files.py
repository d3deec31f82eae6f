"""Files in places others can reach: atomic writes, reads that stay put, bounded parsing.

Why one module: an artifact, an IR folder or a NIR file may come from anyone,
and a kernel cache is loaded as native code, so every layer that touches the
disk needs the same few rules, written once:

- **Writes are atomic and never go through a link.** A file is written to a
  fresh temporary name in its own folder and renamed over the target
  (:func:`write_file`): a reader sees the old file or the new one, never half
  of one; a symbolic link planted at the target is replaced, not followed; a
  file another process has open or mapped keeps its old contents (its inode
  is never truncated).
- **Reads stay where they were asked to read.** :func:`read_file` opens with
  ``O_NOFOLLOW`` and checks it got a regular file of bounded size;
  :func:`inner_dir` walks a relative path inside a folder refusing links.
- **Nothing is allocated before it is checked.** JSON is parsed with a
  nesting limit (:func:`parse_json`); an array's element count is checked
  against :data:`MAX_ELEMENTS` before memory is asked for (:func:`check_elements`).
- **A folder that binaries are loaded from is private** (:func:`private_dir`):
  created 0700, owned by this user, writable by nobody else.

Every problem is an :class:`~snncc.errors.SnnccError` of the caller's choice
naming the path and what to do, never a raw ``OSError``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from snncc.errors import SnnccError

#: the most elements one array may declare (2^31: also what 32-bit kernel indices reach)
MAX_ELEMENTS = 1 << 31
#: the deepest JSON nesting snncc reads (its own files nest fewer than 12 levels)
MAX_JSON_DEPTH = 64
#: the largest JSON document snncc reads (an IR's structure; weights are separate files)
MAX_JSON_BYTES = 256 << 20

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def umask() -> int:
    """The process umask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def os_error_hint(exc: OSError) -> str:
    """What a user can do about ``exc``, in a few words (for one-line messages)."""
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose a folder you can write to"
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", -1):
        return "free some disk space or choose another folder"
    if code == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    if code == errno.EISDIR:
        return "the path is a folder; name a file"
    if code == errno.ENOENT:
        return "check the path"
    if code == errno.ENAMETOOLONG:
        return "choose a shorter path"
    return "check the path and its permissions"


# ------------------------------------------------------------------ writing
def write_file(path: str | os.PathLike, data: bytes | str, *, mode: int = 0o666) -> Path:
    """Write ``data`` to ``path`` atomically: a fresh temporary file beside it, then rename.

    ``mode`` is masked by the umask, as ``open`` would. A link at ``path`` is
    replaced by the file, never followed; on any error the temporary file is
    removed and the old file (if any) is untouched.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            os.fchmod(fh.fileno(), mode & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def replaced_on_success(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` for a writer that insists on a file name
    (ONNX, HDF5); renamed over ``path`` when the block succeeds, removed if it fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def make_dirs(path: str | os.PathLike, mode: int = 0o777) -> Path:
    """``mkdir -p`` giving every folder it creates ``mode`` (``os.makedirs`` gives it to the
    last one only), so a private cache is private from its first missing folder down."""
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            pass
    return path


# ------------------------------------------------------------------ reading
def read_file(path: str | os.PathLike, what: str, error: type[SnnccError], limit: int) -> bytes:
    """The bytes of the regular file ``path`` (not a link, at most ``limit`` bytes)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise error(
                f"{what} {path} is a symbolic link; snncc reads only the files inside the "
                "folder it was given (replace the link with the file)"
            ) from None
        raise error(f"cannot read {what} {path}: {_why(exc)}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is not a regular file")
        if st.st_size > limit:
            raise error(
                f"{what} {path} is {st.st_size} bytes, more than the {limit} bytes snncc reads "
                "from such a file"
            )
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise error(f"cannot read {what} {path}: {_why(exc)}") from None
    if len(data) > limit:
        raise error(f"{what} {path} grew past {limit} bytes while being read")
    return data


def refuse_link(path: str | os.PathLike, what: str, error: type[SnnccError]) -> None:
    """Raise ``error`` if ``path`` itself is a symbolic link."""
    if os.path.islink(path):
        raise error(
            f"{what} {path} is a symbolic link; snncc does not read or write through links "
            "inside an artifact (replace it with the real file or folder)"
        )


def inner_dir(root: str | os.PathLike, rel: str, what: str, error: type[SnnccError]) -> Path:
    """``root/rel`` for a relative ``rel`` whose every component is a real folder (no link,
    no ``..``), so a path read from a file cannot lead outside ``root``."""
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or any(p in ("..", ".") for p in parts):
        raise error(f"{what} {rel!r} must name a folder inside {root}")
    here = Path(root)
    for part in parts:
        here = here / part
        refuse_link(here, what, error)
        if not here.is_dir():
            raise error(f"{what} {here} is missing or not a folder")
    return here


# ------------------------------------------------------------------ limits
def parse_json(
    text: str | bytes,
    what: str,
    error: type[SnnccError],
    max_depth: int = MAX_JSON_DEPTH,
    invalid: str = "is corrupt",
) -> Any:
    """``json.loads`` with a nesting limit, every failure one ``error`` naming ``what``
    (``what`` + ``invalid`` + the parser's message for text that is not JSON)."""
    if len(text) > MAX_JSON_BYTES:
        raise error(f"{what} is {len(text)} bytes, more than the {MAX_JSON_BYTES} snncc reads")
    try:
        doc = json.loads(text)
    except RecursionError:
        raise error(f"{what} nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{what} {invalid}: {exc}") from None
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Iterable[Any] = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            raise error(f"{what} nests deeper than {max_depth} levels")
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return doc


def check_elements(shape: Iterable[Any], what: str, error: type[SnnccError]) -> int:
    """The element count of ``shape``; ``error`` if a dim is not a size or it exceeds the limit."""
    dims = list(shape)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise error(f"{what} has dimension {d!r}; dimensions are integers >= 0")
    n = math.prod(dims)
    if n > MAX_ELEMENTS:
        raise error(
            f"{what} declares {n} elements ({'x'.join(map(str, dims))}), more than the "
            f"{MAX_ELEMENTS} snncc allocates for one array"
        )
    return n


# ------------------------------------------------------------------ private folders
def private_dir(path: str | os.PathLike, what: str, error: type[SnnccError]) -> Path:
    """Create ``path`` (0700) if needed and check nobody else can change what is in it.

    A folder snncc loads binaries from must be owned by this user and not
    writable by group or others, and no folder above it may let others swap
    it (world-writable without the sticky bit, or owned by another user). A
    link as the folder itself is followed only when this user or root owns
    it. Elsewhere than POSIX, only the folder's existence is checked.
    """
    path = Path(os.path.abspath(os.fspath(path)))
    try:
        if not os.path.lexists(path):
            make_dirs(path, 0o700)
        lst = os.lstat(path)
    except OSError as exc:
        raise error(
            f"cannot create {what} {path}: {_why(exc)}; {os_error_hint(exc)} "
            "(SNNCC_CACHE_DIR or the cache_dir option)"
        ) from None
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    if stat.S_ISLNK(lst.st_mode) and euid is not None and lst.st_uid not in (euid, 0):
        raise error(
            f"{what} {path} is a symbolic link owned by another user (uid {lst.st_uid}); "
            "snncc loads kernels only from a folder you own: remove the link or choose another "
            "folder (SNNCC_CACHE_DIR or the cache_dir option)"
        )
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except OSError as exc:
        raise error(f"{what} {path} cannot be used: {_why(exc)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is not a folder; remove it or choose another folder")
    if euid is None:
        return path
    if st.st_uid != euid:
        raise error(
            f"{what} {path} is owned by another user (uid {st.st_uid}); snncc loads kernels "
            "only from a folder you own: choose another folder (SNNCC_CACHE_DIR or the "
            "cache_dir option)"
        )
    if st.st_mode & 0o022:
        raise error(
            f"{what} {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"snncc loads kernels only from a private folder: run 'chmod go-w {path}' or "
            "choose another folder"
        )
    for anc in real.parents:
        try:
            ast = os.stat(anc)
        except OSError:
            continue
        if ast.st_mode & 0o002 and not ast.st_mode & stat.S_ISVTX:
            raise error(
                f"{what} {path} is inside {anc}, which anyone can write to without the sticky "
                "bit (anyone could replace the cache); choose another folder"
            )
        if ast.st_uid not in (euid, 0):
            raise error(
                f"{what} {path} is inside {anc}, owned by another user (uid {ast.st_uid}), who "
                "could replace the cache; choose another folder"
            )
    if not os.access(real, os.W_OK | os.X_OK):
        raise error(f"{what} {path} is not writable; choose a folder you can write to")
    return path


# ------------------------------------------------------------------ swapping folders
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange_dirs(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two folders in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the system or file system cannot (the caller then
    renames in two steps); other failures raise ``OSError``.
    """
    fn = _renameat2()
    if fn is None:
        return False
    res = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if res == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", -1)):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))
