"""Patterns on their own: parsing, tiling checks, masks valid for every drawn shape."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit.patterns import NM, Block, Channel, Unstructured, get_pattern


def test_parsing():
    assert isinstance(get_pattern("unstructured"), Unstructured)
    assert isinstance(get_pattern(" Channel "), Channel)
    p = get_pattern("2:4")
    assert isinstance(p, NM) and (p.n, p.m, p.fixed_sparsity) == (2, 4, 0.5)
    b = get_pattern("block:1x4")
    assert isinstance(b, Block) and (b.rows, b.cols) == (1, 4) and str(b) == "block:1x4"
    with pytest.raises(ValueError, match="unknown"):
        get_pattern("2x4")
    with pytest.raises(TypeError, match="pattern must be a string"):
        get_pattern(4)


@given(
    n=st.integers(1, 4), extra=st.integers(1, 4), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    in_dim=st.integers(0, 1), seed=st.integers(0, 100),
)
def test_nm_mask_is_valid_for_every_shape(n, extra, shape, in_dim, seed):
    m = n + extra
    full = [shape[0], m * shape[-1], *shape[1:]] if in_dim == 1 else [m * shape[0], *shape]
    scores = torch.rand(full, generator=torch.Generator().manual_seed(seed))
    mask = NM(n, m).mask(scores, in_dim)
    assert mask.shape == scores.shape and mask.dtype == torch.bool
    runs = mask.movedim(in_dim, -1).reshape(-1, m)
    assert bool((runs.sum(1) == n).all())
    kept_min = torch.where(runs, scores.movedim(in_dim, -1).reshape(-1, m), torch.inf).min(1).values
    dropped_max = torch.where(~runs, scores.movedim(in_dim, -1).reshape(-1, m), -torch.inf).max(1).values
    assert bool((kept_min >= dropped_max).all())


@given(
    o=st.integers(1, 4), k=st.integers(1, 4), r=st.integers(1, 3), c=st.integers(1, 3),
    tail=st.lists(st.integers(1, 3), max_size=2), seed=st.integers(0, 100),
)
def test_block_expand_tiles_every_shape(o, k, r, c, tail, seed):
    shape = torch.Size([o * r, k * c, *tail]) if not tail else torch.Size([o * r, k * c, *tail])
    b = Block(r, c * 1)
    rest = shape.numel() // shape[0]
    if rest % c:
        with pytest.raises(ValueError, match="does not tile"):
            b.check(shape, "w")
        return
    b.check(shape, "w")
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    g = b.group_scores(scores)
    assert g.numel() == shape.numel() // (r * c)
    keep = torch.rand(g.shape, generator=torch.Generator().manual_seed(seed + 1)) > 0.5
    mask = b.expand(keep, shape)
    assert mask.shape == shape and int(mask.sum()) == int(keep.sum()) * r * c
    tiles = mask.reshape(shape[0], rest).reshape(shape[0] // r, r, rest // c, c)
    assert bool((tiles.all(dim=(1, 3)) | ~tiles.any(dim=(1, 3))).all())


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), out_dim=st.integers(0, 1))
def test_channel_masks_whole_slices_of_the_output_dim(shape, out_dim):
    out_dim = min(out_dim, len(shape) - 1)
    shape = torch.Size(shape)
    ch = Channel()
    keep = torch.arange(shape[out_dim]) % 2 == 0
    mask = ch.expand(keep, shape, out_dim)
    assert mask.shape == shape
    for i in range(shape[out_dim]):
        assert bool((mask.select(out_dim, i) == keep[i]).all())
    assert ch.group_scores(torch.ones(shape), out_dim).shape == (shape[out_dim],)
