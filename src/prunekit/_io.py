"""Files on disk: every writer goes through :func:`atomic_write`; output paths are checked up front.

A write goes to a temporary file in the destination's folder, is flushed and ``fsync``-ed, and
then renamed over the destination with ``os.replace`` (atomic on POSIX and Windows). A crash, a
``kill -9`` or an exception part-way leaves the previous file exactly as it was, and the temporary
file is removed on any error the process survives. New files get the mode an ordinary ``open``
would give them (``0o666`` minus the umask); a replaced file keeps its mode.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Callable, Iterator

__all__ = ["atomic_write", "atomic_path", "check_output_path", "check_input_file"]


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (changing it races threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_path(path: str | os.PathLike, name: str = "path") -> str:
    """``path`` as a string, or a ValueError naming ``name`` when it cannot be written as a file.

    Checked before any work starts, so a long run does not end in a failed write.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{name} is empty; give a file path such as out/model.safetensors")
    if os.path.isdir(path):
        raise ValueError(f"{name}={path!r} is a folder; give a file path inside it, e.g. {os.path.join(path, 'out')!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{name}={path!r}: the folder {folder!r} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{name}={path!r}: the folder {folder!r} is not writable")
    return path


def check_input_file(path: str | os.PathLike, name: str = "path") -> str:
    """``path`` as a string, or an error naming ``name`` when it is not an existing regular file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{name}={path!r} is a folder; give the file inside it")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}={path!r} does not exist")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, name: str = "path") -> Iterator[str]:
    """A temporary path beside ``path`` for writers that want a file name (ONNX, matplotlib);
    renamed over ``path`` when the block succeeds, removed when it fails.

    Example:
        >>> with atomic_path("model.onnx") as tmp:
        ...     torch.onnx.export(model, x, tmp)
    """
    path = check_output_path(path, name)
    if os.path.islink(path):  # write through the link, as open() would, instead of replacing it
        path = os.path.realpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _finish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _finish(tmp: str, path: str) -> None:
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", name: str = "path") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    Args:
        path: the destination file.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).
        name: the argument's name, for error messages.

    Example:
        >>> with atomic_write("advise.json", "w") as f:
        ...     f.write(text)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode={mode!r}: use 'wb' or 'w'")
    with atomic_path(path, name) as tmp:
        with open(tmp, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes, name: str = "path") -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb", name) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, name: str = "path") -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_write(path, "w", name) as f:
        f.write(text)


def written_by(writer: Callable[[str], object], path: str | os.PathLike, name: str = "path") -> None:
    """Run ``writer(tmp_path)`` and move its file to ``path`` atomically."""
    with atomic_path(path, name) as tmp:
        writer(tmp)
