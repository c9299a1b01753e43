"""``torch.compile`` as an opt-in: the backbone and each head compiled in place.

    model = tensorframe.load_model("model.pt")
    tensorframe.compile_model(model)        # or: tensorframe predict --compile, train: compile: true
    model.predict(structures)               # the first batch compiles (minutes), later ones run faster

Dynamic shapes (``dynamic=True``): batches of any number of atoms, edges and triplets reuse
one compiled graph instead of recompiling per size. The modules are compiled in place
(``nn.Module.compile``), so state dicts and checkpoints are unchanged. Inside compiled code
tensorframe's own compiled triplet kernels step aside: the compiler fuses the pure-PyTorch
form itself. Measured speed-ups and compile times are in docs/benchmarks.md; on a CPU they
are modest, and the compile time is paid again by every new process.
"""

from __future__ import annotations

import warnings

from tensorframe.config import ConfigError
from tensorframe.model import TensorModel


def compile_model(model: TensorModel, *, training: bool = False) -> TensorModel:
    """Compiles ``model``'s backbone and heads in place (dynamic shapes) and returns it.

    ``training``: the model will be trained. A conservative model is refused then: its force
    loss needs second derivatives, which compiled graphs do not provide.
    """
    if training and model.conservative:
        raise ConfigError("compile: a conservative model trains on second derivatives (forces = -dE/dr), "
                          "which torch.compile does not support; set compile: false")
    # The basis words are looked up through lru_cache'd pure functions of the field's index
    # formula; dynamo traces through the cache and says so once per function.
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
    for module in (model.backbone, *model.heads.values()):
        module.compile(dynamic=True)
    return model
