"""Reading structures and labels; writers live beside the readers.

:func:`tensorframe.io.read.read_structures` picks a registered reader; it is not re-exported
here, because it needs the registry, and the registry needs the readers of this package (the
package would import itself through the registry).
"""

from tensorframe.io.convert import to_sample

__all__ = ["to_sample"]
