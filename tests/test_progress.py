"""Progress output: tqdm on a terminal, a few plain lines in logs."""

from __future__ import annotations

import io

import pytest

from prunekit import _progress
from prunekit._progress import progress


class _Pipe(io.StringIO):
    def isatty(self):
        return False


def test_a_log_gets_a_line_per_quarter_not_a_frame_per_step(monkeypatch):
    err = _Pipe()
    monkeypatch.setattr(_progress.sys, "stderr", err)
    bar = progress(total=500, desc="train", unit="step")
    for i in range(500):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    bar.close()
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue()
    assert 4 <= len(lines) <= 6 and lines[-1].startswith("train: 500/500 steps") and "loss=0.002" in lines[-1]


def test_iterables_and_disabled_bars(monkeypatch):
    err = _Pipe()
    monkeypatch.setattr(_progress.sys, "stderr", err)
    assert list(progress(range(8), desc="rounds", unit="round")) == list(range(8))
    assert "rounds: 8/8 rounds" in err.getvalue().splitlines()[-1]
    quiet = _Pipe()
    monkeypatch.setattr(_progress.sys, "stderr", quiet)
    assert list(progress(range(3), enabled=False)) == [0, 1, 2] and quiet.getvalue() == ""


def test_a_terminal_gets_tqdm(monkeypatch):
    tqdm = pytest.importorskip("tqdm")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(_progress.sys, "stderr", Tty())
    bar = progress(total=3, desc="x")
    assert isinstance(bar, tqdm.tqdm)
    bar.close()
