"""Reading structures and labels; writers live beside the readers."""

from tensorframe.io.convert import to_sample
from tensorframe.io.read import read_structures

__all__ = ["read_structures", "to_sample"]
