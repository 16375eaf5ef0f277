"""The HTML report: charts present and decodable, tables filled, self-contained.

A static check rather than headless Chromium: CI machines here have no browser (Debian's chromium is
not installed by `make test`), and what could break is what a parser sees: every chart is an inline
PNG that must decode to a real image of nonzero size, and the tables must hold the measured rows.
When a chromium binary is on PATH, the page is also loaded headless and its DOM checked.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.advise import default_candidates
from prunekit.htmlreport import write_report


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.rows, self.cells, self.figures = [], 0, [], 0
        self._cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "tr":
            self.rows += 1
        elif tag == "figure":
            self.figures += 1
        elif tag in ("td", "th"):
            self._cell = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = False

    def handle_data(self, data):
        if self._cell:
            self.cells.append(data)


def parse(path) -> Page:
    page = Page()
    page.feed(open(path).read())
    return page


def png_size(src: str) -> tuple[int, int]:
    import matplotlib.image

    assert src.startswith("data:image/png;base64,")
    image = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
    return image.shape[1], image.shape[0]


def test_report_for_a_pruned_model(tmp_path):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    pk.prune(model, 0.75)
    files = write_report(model, tmp_path / "r.html")
    page = parse(files[0])
    assert len(page.images) == 1 and all(w > 100 and h > 100 for w, h in map(png_size, page.images))
    assert "75.0%" in page.cells and "0.weight" in page.cells and "2.weight" in page.cells
    assert len(files) == 2 and files[1].endswith(".png")


@pytest.fixture(scope="module")
def advice_page(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 8)).eval()
    cands = [c for c in default_candidates() if c.name in ("structured 30%", "2:4")]
    advice = pk.advise(model, torch.randn(4, 32), budget_s=60, threads=1, repeats=2, progress=False, candidates=cands)
    return write_report(advice, tmp_path_factory.mktemp("advice") / "a.html")[0]


def test_report_for_an_advise_run(advice_page):
    page = parse(advice_page)
    assert page.figures == 2 and len(page.images) == 2
    assert all(w > 100 and h > 100 for w, h in map(png_size, page.images))
    assert {"dense (median of the runs)", "structured 30%", "2:4"} <= set(page.cells)
    assert any(c.startswith("this machine") for c in page.cells)  # the decision matrix


def test_renders_in_headless_chromium(advice_page):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH (the static checks above stand in for it)")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", f"file://{advice_page}"],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == 2 and "Decision matrix" in dom
