"""The codec contract: a codec declares its token grid, encodes PCM to frames of slot ids, decodes frames
to PCM at once or in streaming (frames pushed one by one, PCM out as soon as it is final).

A *frame* is one coarse time step of the codec: `grid.n_slots` ids, one per LM audio stream, in the
grid's slot order. Hierarchical codecs (SNAC) carry several ids of the finer codebooks per coarse frame;
`codes_to_frames` / `frames_to_codes` convert between per-codebook code sequences and frames for any
slot order. Imports only torch (no codec package)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from omnivox.core.errors import ConfigError, InputError


@dataclass(frozen=True)
class TokenGrid:
    """The token layout of a codec. `slots[i] = (codebook, offset)`: stream i of coarse frame t carries
    code number `t * per_frame[codebook] + offset` of that codebook."""

    n_codebooks: int
    codebook_size: int
    frame_rate: float  # coarse frames per second
    sample_rate: int
    slots: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        for book, _ in self.slots:
            if not 0 <= book < self.n_codebooks:
                raise ConfigError(
                    f"token grid slot codebook {book} outside 0..{self.n_codebooks - 1}", "fix the codec's slot list"
                )
        for book in range(self.n_codebooks):
            offsets = sorted(o for b, o in self.slots if b == book)
            if not offsets or offsets != list(range(len(offsets))):
                raise ConfigError(
                    f"token grid: codebook {book} has offsets {offsets}; each codebook needs offsets 0..n-1",
                    "list every (codebook, offset) pair exactly once",
                )

    @property
    def n_slots(self) -> int:
        """Ids per coarse frame = number of LM audio streams."""
        return len(self.slots)

    @property
    def per_frame(self) -> tuple[int, ...]:
        """Codes of each codebook per coarse frame."""
        return tuple(sum(1 for b, _ in self.slots if b == book) for book in range(self.n_codebooks))

    @property
    def samples_per_frame(self) -> int:
        spf = self.sample_rate / self.frame_rate
        if abs(spf - round(spf)) > 1e-6:
            raise ConfigError(
                f"token grid: {self.sample_rate} Hz / {self.frame_rate} fps is not whole",
                "declare a frame rate that divides the sample rate",
            )
        return round(spf)


def depth_first_slots(strides: list[int] | tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Slot order of a hierarchical codec whose codebook k runs at 1/strides[k] of the finest rate
    (SNAC's vq_strides, coarsest first): a depth-first walk of the code tree of one coarse frame.
    [4, 2, 1] -> c0[0], c1[0], c2[0], c2[1], c1[1], c2[2], c2[3]."""
    strides = list(strides)
    if not strides:
        raise ConfigError("vq_strides is empty", "give one stride per codebook, e.g. [4, 2, 1]")
    for coarse, fine in zip(strides, strides[1:], strict=False):
        if coarse % fine or coarse <= fine:
            raise ConfigError(
                f"vq_strides {strides} do not nest (each stride must be a multiple of the next, larger)",
                "use strides like [4, 2, 1] or [8, 4, 2, 1]",
            )
    slots: list[tuple[int, int]] = []

    def visit(book: int, offset: int) -> None:
        slots.append((book, offset))
        if book + 1 < len(strides):
            branch = strides[book] // strides[book + 1]
            for child in range(branch):
                visit(book + 1, offset * branch + child)

    visit(0, 0)
    return tuple(slots)


def validate_frames(frames, grid: TokenGrid, what: str = "frames") -> Tensor:
    """Check a (n_frames, n_slots) integer tensor against the grid; returns it as int64 (on its device)."""
    if not isinstance(frames, Tensor):
        frames = torch.as_tensor(frames)
    if frames.dtype.is_floating_point or frames.dtype == torch.bool or frames.is_complex():
        raise InputError(f"{what} have dtype {frames.dtype}", "pass integer codec ids (torch.long)")
    if frames.dim() != 2 or frames.shape[1] != grid.n_slots:
        raise InputError(
            f"{what} have shape {tuple(frames.shape)}; this codec needs (n_frames, {grid.n_slots})",
            f"give {grid.n_slots} ids per frame, in the codec's slot order",
        )
    if frames.shape[0] == 0:
        raise InputError(f"{what} are empty (0 frames)", "pass at least one frame")
    frames = frames.long()
    bad = (frames < 0) | (frames >= grid.codebook_size)
    if bool(bad.any()):
        t, slot = (int(i) for i in bad.nonzero()[0])
        book, offset = grid.slots[slot]
        raise InputError(
            f"{what}[{t}] slot {slot} (codebook {book}, offset {offset}) holds {int(frames[t, slot])}, "
            f"outside the valid range 0..{grid.codebook_size - 1}",
            "strip special tokens (pad/eoa/...) and layer shifts before decoding",
        )
    return frames


def validate_frame(frame, grid: TokenGrid) -> Tensor:
    """One streamed frame (n_slots,) -> validated int64 (1, n_slots)."""
    if not isinstance(frame, Tensor):
        frame = torch.as_tensor(frame)
    if frame.dim() != 1:
        raise InputError(
            f"a pushed frame has shape {tuple(frame.shape)}; push one frame of shape ({grid.n_slots},)",
            "push frames one at a time",
        )
    return validate_frames(frame[None], grid, what="frame")


def codes_to_frames(codes: list[Tensor], grid: TokenGrid) -> Tensor:
    """Per-codebook codes (each (T_k,) or (1, T_k), T_k = n_frames * per_frame[k]) -> (n_frames, n_slots)."""
    if len(codes) != grid.n_codebooks:
        raise InputError(
            f"got {len(codes)} code sequences; this codec has {grid.n_codebooks} codebooks",
            "pass one code tensor per codebook, coarsest first",
        )
    flat = [c.reshape(-1) if c.dim() == 1 or c.shape[0] == 1 else None for c in codes]
    if any(c is None for c in flat):
        raise InputError("codes carry a batch of several items", "convert one item at a time")
    n_frames = flat[0].numel() // grid.per_frame[0]
    for book, (c, per) in enumerate(zip(flat, grid.per_frame, strict=True)):
        if c.numel() != n_frames * per:
            raise InputError(
                f"codebook {book} has {c.numel()} codes; {n_frames} frames need {n_frames * per}",
                "pass complete coarse frames",
            )
    columns = [flat[book].view(n_frames, grid.per_frame[book])[:, offset] for book, offset in grid.slots]
    return torch.stack(columns, dim=1).long()  # (n_frames, n_slots)


def frames_to_codes(frames: Tensor, grid: TokenGrid) -> list[Tensor]:
    """(n_frames, n_slots) -> per-codebook codes, codebook k of shape (n_frames * per_frame[k],)."""
    frames = validate_frames(frames, grid)
    n_frames = frames.shape[0]
    codes = [frames.new_empty(n_frames, per) for per in grid.per_frame]
    for slot, (book, offset) in enumerate(grid.slots):
        codes[book][:, offset] = frames[:, slot]
    return [c.reshape(-1) for c in codes]


@runtime_checkable
class StreamDecoder(Protocol):
    """Frame-by-frame decoding: the concatenation of every push() and the final flush() equals (to the
    codec's stated tolerance) `Codec.decode` of all frames at once. A decoder may also offer
    `push_frames(frames (n, n_slots))`: several frames in one call, the same audio as n pushes to that
    tolerance and less work (see `push_frames` below)."""

    def push(self, frame: Tensor) -> Tensor:
        """One frame (n_slots,) -> float32 PCM that is final now (may be empty)."""

    def flush(self) -> Tensor:
        """End of stream: the remaining PCM (float32)."""


def push_frames(decoder: StreamDecoder, frames: Tensor) -> Tensor:
    """(n, n_slots) frames through a stream decoder in one call where it has `push_frames`, else push by push."""
    many = getattr(decoder, "push_frames", None)
    if many is not None:
        return many(frames)
    return torch.cat([decoder.push(frame) for frame in frames])


@runtime_checkable
class Codec(Protocol):
    grid: TokenGrid

    def encode(self, pcm: Tensor, sample_rate: int) -> Tensor:
        """PCM (samples,) or (channels, samples), any rate -> frames (n_frames, n_slots) int64."""

    def decode(self, frames: Tensor) -> Tensor:
        """(n_frames, n_slots) -> float32 PCM (n_frames * grid.samples_per_frame,) at grid.sample_rate."""

    def stream_decoder(self) -> StreamDecoder:
        """A fresh streaming decoder for one utterance."""
