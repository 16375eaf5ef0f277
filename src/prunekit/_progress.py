"""Progress bars that do not flood logs.

On a terminal, :func:`progress` is a tqdm bar. When stderr is not a terminal (CI, ``make demo >
log``, a notebook's captured output), tqdm rewrites its line with ``\\r`` on every update, which a
log keeps as thousands of frames; there a bar prints one line at the start and one at each quarter
instead, with the latest postfix.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable

__all__ = ["progress"]


class _Lines:
    """The part of tqdm's interface prunekit uses, as a few plain lines on stderr."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix, self.start, self.shown = 0, "", time.perf_counter(), -1

    def _emit(self, force: bool = False) -> None:
        quarter = 4 * self.n // self.total if self.total else 0
        if not force and quarter == self.shown:
            return
        self.shown = quarter
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit}s, {time.perf_counter() - self.start:.0f} s{tail}", file=sys.stderr,
              flush=True)

    def __iter__(self):
        self._emit(force=True)
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._emit()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        if self.total is None or self.n != self.total or self.shown != 4:
            self._emit(force=True)


class _Off:
    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, leave: bool = True):
    """A progress bar over ``iterable`` (or ``total`` steps driven by ``update``).

    Example:
        >>> bar = progress(total=100, desc="train", enabled=show)
        >>> for _ in range(100):
        ...     bar.update(1)
        >>> bar.close()
    """
    if not enabled:
        return _Off(iterable if iterable is not None else ())
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave)
    return _Lines(iterable, total, desc, unit)
