"""Crafted, damaged and hostile files: one clear ValueError, bounded memory, the model unchanged."""

from __future__ import annotations

import json
import lzma
import struct
import tracemalloc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_bytes
from torch import nn

import prunekit as pk
from tests.helpers import assert_unchanged, snapshot

DAMAGED = "not a prunekit file, or it is damaged"


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    pk.prune(m, 0.5)
    return m


def _split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _join(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _valid(tmp_path, quantize=None) -> bytes:
    path = tmp_path / "good.safetensors"
    pk.save(_model(), path, quantize=quantize)
    return path.read_bytes()


def _with_prunekit(blob: bytes, change) -> bytes:
    header, data = _split(blob)
    pk_header = json.loads(header["__metadata__"]["prunekit"])
    change(pk_header)
    header["__metadata__"]["prunekit"] = json.dumps(pk_header)
    return _join(header, data)


def _with_st(blob: bytes, change) -> bytes:
    header, data = _split(blob)
    change(header)
    return _join(header, data)


def _set(d, path, value):
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


CRAFTED = {
    "wrong numel": lambda b: _with_prunekit(b, lambda h: _set(h, ["tensors", "0.weight", "shape"], [16, 17])),
    "shape not a list": lambda b: _with_prunekit(b, lambda h: _set(h, ["tensors", "0.weight", "shape"], "16x16")),
    "unknown encoding": lambda b: _with_prunekit(b, lambda h: _set(h, ["tensors", "0.bias", "encoding"], "rle")),
    "tensors not a dict": lambda b: _with_prunekit(b, lambda h: _set(h, ["tensors"], [1, 2])),
    "masked not a bool": lambda b: _with_prunekit(b, lambda h: _set(h, ["tensors", "0.weight", "masked"], "yes")),
    "false int4 claim": lambda b: _with_prunekit(b, lambda h: _set(h, ["tensors", "0.weight", "quant"], "int4-row")),
    "unknown dtype": lambda b: _with_prunekit(b, lambda h: _set(h, ["tensors", "0.bias", "dtype"], "complex64")),
    "pattern not text": lambda b: _with_prunekit(b, lambda h: _set(h, ["tensors", "0.weight", "pattern"], 12)),
    "alias to nothing": lambda b: _with_prunekit(b, lambda h: _set(h, ["aliases"], {"x.weight": "nope"})),
    "format from the future": lambda b: _with_prunekit(b, lambda h: _set(h, ["format"], "prunekit.sparse.v9")),
    "dtype F32 -> I32": lambda b: _with_st(b, lambda h: _set(h, ["0.bias", "dtype"], "I32")),
    "offsets past the end": lambda b: _with_st(b, lambda h: _set(h, ["0.bias", "data_offsets"], [0, 10 ** 9])),
    "header not JSON": lambda b: b[:8] + b"x" + b[9:],
    "trailing bytes": lambda b: b + b"\x00" * 16,
    "header length too big": lambda b: struct.pack("<Q", 2 ** 60) + b[8:],
    "truncated": lambda b: b[: len(b) - 40],
    "prunekit header not JSON": lambda b: _with_st(b, lambda h: _set(h, ["__metadata__", "prunekit"], "{oops")),
    "truncated lzma": lambda b: lzma.compress(b)[:-30],
    "dtype is a list": lambda b: _with_prunekit(b, lambda h: _set(h, ["tensors", "0.bias", "dtype"], ["float32"])),
    "safetensors dtype is a list": lambda b: _with_st(b, lambda h: _set(h, ["0.bias", "dtype"], ["F32"])),
    "alias is a list": lambda b: _with_prunekit(b, lambda h: _set(h, ["aliases"], {"x.weight": ["0.weight"]})),
    "deeply nested header": lambda b: _with_st(b, lambda h: _set(h, ["__metadata__", "prunekit"], "[" * 100000)),
    "lzma garbage": lambda b: lzma.compress(b)[:12] + b"\x00" * 64,
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_file_gives_one_value_error_and_changes_nothing(tmp_path, case):
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(CRAFTED[case](_valid(tmp_path)))
    fresh = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    before = snapshot(fresh)
    with pytest.raises(ValueError) as err:
        pk.load(path, fresh)
    assert DAMAGED in str(err.value) or "different model" in str(err.value)
    assert_unchanged(fresh, before)


def test_lzma_bomb_is_refused_before_it_is_decompressed(tmp_path):
    """256 MB of zeros in 39 KB of xz: refused by its header, without allocating the tensor."""
    tensors = {"0.weight": {"dtype": "F32", "shape": [1 << 26], "data_offsets": [0, 1 << 28]}}
    pk_header = {"format": "prunekit.sparse.v1", "aliases": {}, "model_class": "Sequential",
                 "tensors": {"0.weight": {"shape": [1 << 26], "dtype": "float32", "encoding": "dense"}}}
    raw = json.dumps({**tensors, "__metadata__": {"prunekit": json.dumps(pk_header)}}).encode()
    comp = lzma.LZMACompressor(preset=0)
    parts = [comp.compress(struct.pack("<Q", len(raw)) + raw)]
    parts += [comp.compress(bytes(1 << 24)) for _ in range(16)]
    path = tmp_path / "bomb.pk"
    path.write_bytes(b"".join(parts) + comp.flush())
    assert path.stat().st_size < 100_000
    fresh = nn.Linear(16, 16)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="different model"):
            pk.load(path, fresh)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2 ** 20


def test_data_beyond_what_the_model_can_hold_is_not_decompressed(tmp_path):
    """A header that matches the model but announces more bytes than its entries can hold."""
    blob = _valid(tmp_path)
    header, data = _split(blob)
    last = max(header[k]["data_offsets"][1] for k in header if k != "__metadata__")
    header["padding"] = {"dtype": "U8", "shape": [1 << 26], "data_offsets": [last, last + (1 << 26)]}
    path = tmp_path / "padded.pk"
    path.write_bytes(lzma.compress(_join(header, data + bytes(1 << 26)), preset=0))
    with pytest.raises(ValueError, match="stores tensors no entry describes"):
        pk.load(path, nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)))


@settings(max_examples=60)
@given(data=st.data())
def test_fuzzed_files_load_correctly_or_raise_value_error(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    blob = bytearray(_valid(tmp, quantize=data.draw(st.sampled_from([None, "int8", "int4"]))))
    if data.draw(st.booleans()):
        blob = bytearray(lzma.compress(bytes(blob), preset=0))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    path = tmp / "fuzzed.pk"
    path.write_bytes(bytes(blob))
    fresh = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    before = snapshot(fresh)
    try:
        pk.load(path, fresh)
    except ValueError:
        assert_unchanged(fresh, before)
        return
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in _model().parameters()]


def test_old_structured_files_still_load(tmp_path):
    """Format prunekit-structured/1 (before one file format): a state dict plus module sizes."""
    small = nn.Sequential(nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 8))
    attrs = {"0": {"in_features": 16, "out_features": 4}, "2": {"in_features": 4, "out_features": 8}}
    meta = {"format": "prunekit-structured/1", "attrs": json.dumps(attrs), "classes": "{}"}
    path = tmp_path / "old.safetensors"
    path.write_bytes(save_bytes({k: v.contiguous() for k, v in small.state_dict().items()}, metadata=meta))
    fresh = pk.load(path, nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)))
    assert fresh[0].out_features == 4 and fresh[0].weight.shape == (4, 16)
    x = torch.randn(2, 16)
    assert torch.equal(fresh(x), small(x))


def test_report_streams_through_a_bomb_with_bounded_memory(tmp_path):
    """prunekit report has no model to bound a file by: it counts nonzeros chunk by chunk."""
    from prunekit.deploy.storage import describe

    n = 1 << 26  # 256 MB of float32 zeros in ~40 KB of xz
    tensors = {"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}
    pk_header = {"format": "prunekit.sparse.v1", "aliases": {}, "model_class": "X",
                 "tensors": {"w": {"shape": [n], "dtype": "float32", "encoding": "dense"}}}
    raw = json.dumps({**tensors, "__metadata__": {"prunekit": json.dumps(pk_header)}}).encode()
    comp = lzma.LZMACompressor(preset=0)
    parts = [comp.compress(struct.pack("<Q", len(raw)) + raw)] + [comp.compress(bytes(1 << 24)) for _ in range(16)]
    path = tmp_path / "bomb.pk"
    path.write_bytes(b"".join(parts) + comp.flush())
    tracemalloc.start()
    try:
        _, rows = describe(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == [{"name": "w", "shape": [n], "encoding": "dense", "pattern": None, "quant": None, "numel": n,
                     "nonzeros": 0}]
    assert peak < 80 * 2 ** 20


def test_old_structured_files_of_tied_models_still_load(tmp_path):
    """The old format stored both names of a tied tensor."""
    from tests.helpers import Tied

    model = Tied()
    meta = {"format": "prunekit-structured/1", "attrs": json.dumps({}), "classes": "{}"}
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "tied.safetensors"
    path.write_bytes(save_bytes(state, metadata=meta))
    fresh = pk.load(path, Tied())
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(fresh(ids), model(ids)) and fresh.head.weight is fresh.emb.weight


@pytest.mark.parametrize("compress", [None, "lzma"])
def test_a_flipped_bit_in_the_tensor_data_is_caught_by_the_checksum(tmp_path, compress):
    """Plain safetensors has no checksum: 25 of 30 flipped data bits used to load, one as 1e37."""
    from prunekit.deploy.storage import describe

    path = tmp_path / "m.pk"
    pk.save(_model(), path)
    blob = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", blob[:8])
    for i in range(8 + n, len(blob), max(1, (len(blob) - 8 - n) // 7)):
        damaged = bytearray(blob)
        damaged[i] ^= 0x10
        data = bytes(damaged) if compress is None else lzma.compress(bytes(damaged))
        path.write_bytes(data)
        with pytest.raises(ValueError, match="do not match their checksum"):
            pk.load(path, nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)))
        with pytest.raises(ValueError, match="do not match their checksum"):
            describe(path)
