"""Cheap checks of a structure file's layout before ase parses it.

ase's XYZ readers trust the atom count of each frame: a header claiming 10^9 atoms makes
them read (or allocate) for that many lines, which hangs. :func:`scan_xyz` walks the frame
headers first, counting lines in blocks (no Python work per atom line), and refuses a count
that is not a non-negative integer or a frame with fewer lines than it claims. It also
refuses a blank line followed by more text (ase stops at the first blank line, so the
frames after it would be dropped silently). Plain, ``.gz``, ``.bz2`` and ``.xz`` files.

:func:`check_poscar_scale` refuses a POSCAR scale factor of 0, which zeroes the lattice.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

from tensorframe.io.validation import InputError

CHUNK_BYTES = 1 << 24
"""Bytes decompressed and scanned at a time (16 MiB)."""

_PBC_KEY = re.compile(rb"(?:^|\s)pbc(?:\s*=|\s|$)")  # ase's key is case-sensitive


class XyzFrame(NamedTuple):
    """One frame's header: its count line (1-based), its atom count, and whether its comment
    line declares ``pbc=`` (else ase derives periodicity from the presence of ``Lattice=``)."""

    line: int
    num_atoms: int
    declares_pbc: bool


def open_binary(path: str | Path) -> IO[bytes]:
    """``path`` opened for reading bytes, decompressed by its suffix (.gz, .bz2, .xz)."""
    name = str(path).lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def _blocks(path: str | Path) -> Iterator[tuple[bytes, np.ndarray]]:
    """The file in blocks of whole lines: each block's bytes and the offsets (K,) of its K
    newlines (an unterminated last line of the file comes as a block of its own, given one)."""
    with open_binary(path) as handle:
        rest = b""
        while chunk := handle.read(CHUNK_BYTES):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            rest = chunk[cut:]
            if cut:
                block = chunk[:cut]
                yield block, np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n"))
        if rest:
            yield rest + b"\n", np.array([len(rest)])


def scan_xyz(path: str | Path) -> list[XyzFrame]:
    """The frame headers of an (extended) XYZ file, checked against the lines present.

    Atom lines are counted, not read: the cost is a pass over the bytes plus Python work
    per frame. Lines after a frame's atom lines that start with ``VEC`` (lattice vectors of
    the plain XYZ dialect) belong to that frame. Blank lines at the end are ignored.

    Raises:
        InputError: ``"<file>: structure <i> cannot be read: ..."`` for a count line that is not a
            non-negative integer, a frame with fewer lines than its header says, or a blank
            line followed by more text.
    """
    frames: list[XyzFrame] = []
    state = "count"  # expecting: count line, comment line, atom lines (counted), VEC lines
    skip = 0  # atom lines still to pass over
    number = 0  # 1-based number of the last line seen
    blank_at = 0  # line number of a blank line where a count line was expected
    pbc_key = _PBC_KEY.search
    for block, end_array in _blocks(path):
        ends = end_array.tolist()
        index, size = 0, len(ends)  # index: the next line of the block
        while index < size:
            if state == "atoms":
                take = min(skip, size - index)
                skip, index, number = skip - take, index + take, number + take
                if skip:
                    continue
                state = "vec"
                if index == size:
                    break
            line = block[ends[index - 1] + 1 if index else 0 : ends[index]]
            index, number = index + 1, number + 1
            if state == "vec":
                if line.lstrip().startswith(b"VEC"):
                    continue
                state = "count"
            if state == "count":
                if not line.strip():
                    blank_at = blank_at or number
                    continue
                if blank_at:
                    raise InputError(
                        f"{path}: structure {len(frames)} cannot be read: line {blank_at} is blank but more text follows "
                        f"at line {number}; ase stops reading at a blank line, so the frames after it would be dropped: "
                        f"remove the blank line"
                    )
                skip = _count(path, line, number, len(frames))
                state = "comment"
            else:  # the comment line of the frame whose count is in `skip`
                frames.append(XyzFrame(number - 1, skip, b"pbc" in line and pbc_key(line) is not None))
                state = "atoms" if skip else "vec"
    if state == "comment":
        raise InputError(
            f"{path}: structure {len(frames)} cannot be read: header says {skip} atoms but only 0 atom lines follow "
            f"(line {number}) and no comment line; truncated file?"
        )
    if state == "atoms":
        frame = frames[-1]
        raise InputError(
            f"{path}: structure {len(frames) - 1} cannot be read: header says {frame.num_atoms} atoms but only "
            f"{frame.num_atoms - skip} atom lines follow (line {frame.line}); truncated file?"
        )
    return frames


def _count(path: str | Path, line: bytes, number: int, frame: int) -> int:
    """The number of atoms on the count line ``line`` (line ``number``) of frame ``frame``."""
    try:
        count = int(line)  # int() takes bytes with surrounding whitespace
    except ValueError:
        text = line.strip().decode(errors="replace")
        raise InputError(
            f"{path}: structure {frame} cannot be read: line {number}: expected the number of atoms of a frame, "
            f"got {text[:40]!r}"
        ) from None
    if count < 0:
        raise InputError(
            f"{path}: structure {frame} cannot be read: line {number}: expected a non-negative number of atoms, got {count}"
        )
    return count


def check_poscar_scale(path: str | Path) -> None:
    """Refuse a POSCAR whose scale factor (line 2) is 0, or that has a zero among three.

    A negative single factor is VASP's cell volume (Å^3) and is fine; ase reads it so.

    Raises:
        InputError: ``"<file>: structure 0, field 'cell': ..."``.
    """
    with open_binary(path) as handle:
        handle.readline()
        words = handle.readline().split()
    try:
        factors = np.array([float(word) for word in words], dtype=np.float64)
    except ValueError:
        raise InputError(
            f"{path}: structure 0, field 'cell': line 2: expected the scale factor (1 or 3 numbers), "
            f"got {b' '.join(words).decode(errors='replace')[:40]!r}"
        ) from None
    if factors.size in (1, 3) and np.any(factors == 0):
        raise InputError(
            f"{path}: structure 0, field 'cell': the scale factor (line 2) is 0, which makes every lattice vector zero; "
            f"expected three linearly independent vectors for a periodic structure"
        )
