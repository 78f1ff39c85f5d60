"""A network of stride-1 convolutions run over an image in full-width strips, top to bottom,
with nothing computed twice.

Square tiles recompute a margin of context on every side (8-16 % of the work at 2048 x 2048 on
the CPU). A strip needs none: each convolution keeps the last ``k - 1`` rows of its input for the
next strip, each residual connection keeps the rows its branch has not reached yet, and only the
image's own top and bottom are padded, so the result is the network's on the whole image, up to
float rounding, in the memory of one strip (:class:`RowPass`).

A strip's activations are a :class:`Strip`: its first row and its row blocks, in order. Blocks
are not joined into one tensor, because copying a strip costs as much as an activation function:
a convolution convolves each large block where it lies and joins only the few rows at the seams.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: consecutive blocks shorter than this (rows) are joined into one; longer ones are never copied
SHORT_BLOCK = 16


@dataclass
class Strip:
    """Rows ``start`` to ``stop`` of an activation (``(N, C, rows, X)`` blocks, in order)."""

    start: int
    blocks: List[torch.Tensor]

    @property
    def stop(self) -> int:
        return self.start + sum(block.shape[2] for block in self.blocks)

    def located(self) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(first row, block)`` pairs."""
        start = self.start
        for block in self.blocks:
            yield start, block
            start += block.shape[2]

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> "Strip":
        """A pointwise function (an activation) applied block by block."""
        return Strip(self.start, [function(block) for block in self.blocks])


def _rows(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return x[:, :, start:stop]


def _join(blocks: List[torch.Tensor]) -> torch.Tensor:
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)


def _tidy(blocks: List[torch.Tensor]) -> List[torch.Tensor]:
    """``blocks`` with each run of consecutive short ones joined, and empty ones dropped."""
    out: List[torch.Tensor] = []
    run: List[torch.Tensor] = []
    for block in blocks:
        if block.shape[2] >= SHORT_BLOCK:
            if run:
                out.append(_join(run))
                run = []
            out.append(block)
        elif block.shape[2]:
            run.append(block)
    if run:
        out.append(_join(run))
    return out


class RowPass:
    """One image's way through a network, strip by strip: what each layer keeps between strips.

    ``x`` is the whole input ``(N, C, Y, X)``; :meth:`strips` yields it ``rows`` rows at a time,
    and the network's forward pass for a strip is written with :meth:`conv` (or :meth:`through`
    for a chain of layers), :meth:`add` and :meth:`window` in place of convolutions, residual sums
    and row-local stages.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.last = False  # whether the current strip reaches the image's bottom
        self._kept: Dict[object, object] = {}  # per layer (its module): what it keeps for the next strip

    def strips(self, rows: int) -> Iterator[Strip]:
        height, rows = self.x.shape[2], max(int(rows), 1)
        for start in range(0, height, rows):
            self.last = start + rows >= height
            yield Strip(start, [_rows(self.x, start, start + rows)])

    def _zeros(self, channels: int, rows: int, like: Strip) -> torch.Tensor:
        """Rows of zero padding for a layer's input, in the dtype of that input (bf16 under autocast)."""
        n, _, _, width = self.x.shape
        dtype = like.blocks[0].dtype if like.blocks else self.x.dtype
        return self.x.new_zeros(n, channels, rows, width, dtype=dtype).contiguous(memory_format=torch.channels_last)

    def through(self, layers: Iterable[nn.Module], strip: Strip) -> Strip:
        """``layers`` in order: convolutions by :meth:`conv`, the rest (activations, batch norm at
        inference) block by block."""
        for layer in layers:
            strip = self.conv(layer, strip) if isinstance(layer, nn.Conv2d) else strip.map(layer)
        return strip

    def conv(self, layer: nn.Conv2d, strip: Strip) -> Strip:
        """``layer`` (k x k, stride 1, zero padding k // 2) on the rows that the strip completes."""
        k, pad = layer.kernel_size[0], layer.padding[0]
        before = self._kept.pop(layer, None) or Strip(strip.start - pad, [self._zeros(layer.in_channels, pad, strip)])
        sequence = before.blocks + strip.blocks + ([self._zeros(layer.in_channels, pad, strip)] if self.last else [])

        def valid(blocks: List[torch.Tensor]) -> List[torch.Tensor]:  # no padding across rows, zeros across columns
            joined = _join(blocks)
            if joined.shape[2] < k:
                return []
            return [F.conv2d(joined, layer.weight, layer.bias, padding=(0, layer.padding[1]))]

        out: List[torch.Tensor] = []
        seam: List[torch.Tensor] = []  # rows waiting to be joined: short blocks and the ends of long ones
        for block in sequence:
            if block.shape[2] > 2 * (k - 1):
                out += valid(seam + [_rows(block, 0, k - 1)]) + valid([block])
                seam = [_rows(block, block.shape[2] - (k - 1), block.shape[2])]
            elif block.shape[2]:
                seam.append(block)
        out += valid(seam)
        if not self.last:
            ends = _join(seam)
            self._kept[layer] = Strip(strip.stop - (k - 1), [_rows(ends, ends.shape[2] - (k - 1), ends.shape[2]).clone()])
        return Strip(before.start + pad, _tidy(out))

    def add(self, key: object, identity: Strip, branch: Strip) -> Strip:
        """``identity + branch`` row for row (a residual connection named ``key``), summed into the
        branch's blocks, which no one else holds: the branch lags behind its input, so the
        identity's rows it has not reached wait for the next strip."""
        waiting = self._kept.pop(key, None)
        if waiting is not None:
            identity = Strip(waiting.start, waiting.blocks + identity.blocks)
        if branch.start != identity.start:
            raise AssertionError(f"a residual branch starts at row {branch.start}, its identity at {identity.start}")
        ones, others, out = list(identity.blocks), list(branch.blocks), []
        while others:
            rows = min(ones[0].shape[2], others[0].shape[2])
            out.append(_rows(others[0], 0, rows).add_(_rows(ones[0], 0, rows)))  # the branch's own, fresh rows
            ones[0], others[0] = _rows(ones[0], rows, ones[0].shape[2]), _rows(others[0], rows, others[0].shape[2])
            ones, others = [b for b in ones if b.shape[2]], [b for b in others if b.shape[2]]
        if ones:
            self._kept[key] = Strip(branch.stop, [block.clone() for block in ones])
        return Strip(branch.start, _tidy(out))

    def window(self, key: object, strip: Strip, radius: int,
               function: Callable[[torch.Tensor], torch.Tensor]) -> Tuple[int, torch.Tensor]:
        """A row-local stage named ``key``: ``function`` maps rows to ``s`` times as many output
        rows, each depending on input rows at most ``radius`` away (it pads the image's own edges).
        Returns the first input row of the output the strip completes, and that output; the rows
        after it wait, with their context, for the next strip. Only those ``2 * radius`` rows of
        context per strip are computed twice: for SRResNet's upsampling stages, 6 rows."""
        waiting, top = self._kept.pop(key, (None, 0))
        rows = strip if waiting is None else Strip(waiting.start, waiting.blocks + strip.blocks)
        joined = _join(rows.blocks)
        bottom = rows.stop if self.last else max(rows.stop - radius, top)
        if not self.last:
            keep = max(bottom - radius, rows.start)
            self._kept[key] = (Strip(keep, [_rows(joined, keep - rows.start, joined.shape[2]).clone()]), bottom)
        y = function(joined)
        s = y.shape[2] // joined.shape[2]
        return top, _rows(y, (top - rows.start) * s, (bottom - rows.start) * s)


__all__ = ["RowPass", "SHORT_BLOCK", "Strip"]
