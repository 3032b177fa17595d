"""The codec contract (core/codec.py): token grids, SNAC slot order, codes <-> frames, frame validation."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omnivox.core.contracts.codec import (
    TokenGrid,
    codes_to_frames,
    depth_first_slots,
    frames_to_codes,
    push_frames,
    validate_frames,
)
from omnivox.core.errors import ConfigError, InputError

UPSTREAM = Path("/work/.mirror/gpt-omni+mini-omni/repo")


def grid_for(strides, codebook_size=4096) -> TokenGrid:
    return TokenGrid(len(strides), codebook_size, 24000 / (512 * strides[0]), 24000, depth_first_slots(strides))


def test_snac_24khz_order_is_mini_omni_depth_first():
    # MINI_OMNI.md: [c0[t], c1[2t], c2[4t], c2[4t+1], c1[2t+1], c2[4t+2], c2[4t+3]]
    assert depth_first_slots([4, 2, 1]) == ((0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (2, 2), (2, 3))
    grid = grid_for([4, 2, 1])
    assert (grid.n_slots, grid.per_frame, grid.samples_per_frame) == (7, (1, 2, 4), 2048)
    assert grid.frame_rate == pytest.approx(11.71875)


def test_four_codebook_order_is_upstreams_15_slots():
    # utils/snac_utils.py reconstruct_tensors, n_tensors == 15: the codebook of each of the 15 positions
    books = [slot[0] for slot in depth_first_slots([8, 4, 2, 1])]
    assert books == [0, 1, 2, 3, 3, 2, 3, 3, 1, 2, 3, 3, 2, 3, 3]


@pytest.mark.skipif(not UPSTREAM.exists(), reason="upstream mini-omni mirror not available")
def test_frames_match_upstream_reconstruct_tensors():
    """Our frames, flattened with '#' separators, give the same code tensors through upstream's code."""
    source = subprocess.run(
        ["git", "-C", str(UPSTREAM), "show", "HEAD:utils/snac_utils.py"], capture_output=True, text=True, check=True
    ).stdout
    upstream: dict = {}
    exec(compile(source, "snac_utils.py", "exec"), upstream)
    for strides in ([4, 2, 1], [8, 4, 2, 1]):
        grid = grid_for(strides)
        gen = torch.Generator().manual_seed(len(strides))
        codes = [torch.randint(0, 4096, (3 * grid.per_frame[k],), generator=gen) for k in range(len(strides))]
        flat = []
        for frame in codes_to_frames(codes, grid).tolist():
            flat += ["#"] + frame
        theirs = upstream["reconstruct_tensors"](flat, device=torch.device("cpu"))
        assert [t[0].tolist() for t in theirs] == [c.tolist() for c in codes]


@st.composite
def grids_and_codes(draw):
    n_books = draw(st.integers(1, 4))
    ratios = [draw(st.sampled_from([1, 2, 3])) + 1 for _ in range(n_books - 1)]
    strides = [1]
    for r in reversed(ratios):
        strides.insert(0, strides[0] * r)
    size = draw(st.integers(2, 5000))
    grid = grid_for(strides, size)
    n_frames = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    codes = [torch.randint(0, size, (n_frames * per,), generator=gen) for per in grid.per_frame]
    return grid, codes


@settings(max_examples=60, deadline=None)
@given(grids_and_codes())
def test_codes_frames_round_trip_and_slot_mapping(case):
    grid, codes = case
    frames = codes_to_frames(codes, grid)
    n_frames = frames.shape[0]
    assert frames.shape == (n_frames, grid.n_slots) and frames.dtype == torch.long
    for t in range(n_frames):  # slot (k, j) of frame t is code t*per_frame[k] + j of codebook k
        for slot, (book, offset) in enumerate(grid.slots):
            assert frames[t, slot] == codes[book][t * grid.per_frame[book] + offset]
    back = frames_to_codes(frames, grid)
    assert all(torch.equal(a, b) for a, b in zip(back, codes, strict=True))
    # depth-first: within a frame, each codebook's codes appear in time order
    for book in range(grid.n_codebooks):
        offsets = [o for b, o in grid.slots if b == book]
        assert offsets == sorted(offsets)


def test_validate_frames_names_slot_and_range():
    grid = grid_for([4, 2, 1])
    frames = torch.zeros(3, 7, dtype=torch.long)
    frames[2, 4] = 4097  # upstream's pad_a, not a code
    with pytest.raises(InputError, match=r"frames\[2\] slot 4 \(codebook 1, offset 1\) holds 4097.*0\.\.4095"):
        validate_frames(frames, grid)
    frames[2, 4] = -1
    with pytest.raises(InputError, match="holds -1"):
        validate_frames(frames, grid)
    with pytest.raises(InputError, match=r"shape \(3, 8\).*\(n_frames, 7\)"):
        validate_frames(torch.zeros(3, 8, dtype=torch.long), grid)
    with pytest.raises(InputError, match="0 frames"):
        validate_frames(torch.zeros(0, 7, dtype=torch.long), grid)
    with pytest.raises(InputError, match="dtype"):
        validate_frames(torch.zeros(3, 7), grid)


def test_codes_of_incomplete_frames_are_rejected():
    grid = grid_for([4, 2, 1])
    with pytest.raises(InputError, match="codebook 2 has 7 codes; 2 frames need 8"):
        codes_to_frames([torch.zeros(2), torch.zeros(4), torch.zeros(7)], grid)


def test_bad_grids_are_config_errors():
    with pytest.raises(ConfigError, match="do not nest"):
        depth_first_slots([4, 3, 1])
    with pytest.raises(ConfigError, match="offsets"):
        TokenGrid(2, 16, 12.5, 24000, ((0, 0), (1, 1)))


def test_push_frames_falls_back_to_one_push_per_frame():
    """A stream decoder without push_frames gets the frames one by one, its audio concatenated."""

    class OneByOne:
        def __init__(self):
            self.pushed = []

        def push(self, frame):
            self.pushed.append(frame.tolist())
            return torch.full((2,), float(frame[0]))

    decoder = OneByOne()
    out = push_frames(decoder, torch.tensor([[1, 0], [2, 0], [3, 0]]))
    assert decoder.pushed == [[1, 0], [2, 0], [3, 0]] and out.tolist() == [1, 1, 2, 2, 3, 3]
