"""The training configuration: one YAML file, validated by pydantic (unknown keys are errors).

Example (``configs/becs_eps_etgnn.yaml``)::

    model:    {cutoff: 6.0, triplet_cutoff: 4.0, backbone: {name: etgnn}, heads: [{name: born}, {name: dielectric}]}
    data:     {path: data.xyz, key_map: {becs: born_charges, eps: dielectric}}
    split:    {train: 0.8, valid: 0.1, test: 0.1, seed: 0}
    targets:  {born_charges: 1.0, dielectric: 1.0}
    loss: euclidean
    epochs: 200
    output_dir: runs/becs_eps

Relative paths (``data.path``, ``split.file``, ``output_dir``) are taken relative to the
folder of the config file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from tensorframe.config import ConfigError, ModelConfig, format_validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """Where the structures come from: files read by :func:`tensorframe.read_structures`
    (``path``: one file or a list, ``format``: a reader name, ``key_map``/``options``: reader
    options), or ``default: true`` (equivalently ``data: default``) for the embedded molecule set."""

    path: str | list[str] | None = None
    format: str | None = None
    key_map: dict[str, str] | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="more keyword options of the reader")
    default: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"default": True} if value == "default" else value

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.default == (self.path is not None):
            raise ValueError("give either path (one file or a list of files) or default: true, not both or neither")
        if self.default and (self.format or self.key_map or self.options):
            raise ValueError("format, key_map and options apply to files; the default data set takes none")
        return self

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path or [])


class SplitConfig(_Strict):
    """Fractions of the structures (shuffled with ``seed``) or a JSON ``file`` with lists of
    indices ``{"train": [...], "valid": [...], "test": [...]}`` (``test`` may be absent)."""

    train: NonNegativeFloat = 0.8
    valid: NonNegativeFloat = 0.1
    test: NonNegativeFloat = 0.1
    seed: int = 0
    file: str | None = None

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.file is None and abs(self.train + self.valid + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + valid + test must be 1, got {self.train + self.valid + self.test:g}")
        return self


class NormalizeConfig(_Strict):
    """Per-field normalisation from the training split, stored in the model's output scaling."""

    enabled: bool = True
    shift: bool = Field(True, description="isotropic shift for rank-0 and rank-2 fields where it is equivariant")
    E0s: Literal["fit", "average", "none"] | dict[str, float] = Field(
        "fit",
        description="reference energy per element: 'fit' (least squares on the element counts of the training "
        "split; 'average' is MACE's name for the same fit), 'none', or {symbol: eV} for every element of the data",
    )


class OptimizerConfig(_Strict):
    name: Literal["adamw"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0


class SchedulerConfig(_Strict):
    """ReduceLROnPlateau on the validation loss."""

    name: Literal["plateau"] = "plateau"
    factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(10, ge=0)
    min_lr: NonNegativeFloat = 1e-6
    threshold: NonNegativeFloat = 1e-4


class EarlyStoppingConfig(_Strict):
    """Stop after ``patience`` epochs without a validation loss below the best minus ``min_delta``."""

    patience: PositiveInt = 30
    min_delta: NonNegativeFloat = 0.0


class TrainConfig(_Strict):
    """Everything a training run needs; see the module docstring and docs/training.md."""

    model: ModelConfig
    data: DataConfig
    split: SplitConfig = SplitConfig()
    targets: dict[str, PositiveFloat] = Field(min_length=1, description="{field: loss weight}")
    loss: Literal["euclidean", "mse", "mae"] = "euclidean"
    normalize: NormalizeConfig = NormalizeConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig | None = SchedulerConfig()
    early_stopping: EarlyStoppingConfig | None = EarlyStoppingConfig()
    grad_clip: PositiveFloat | None = Field(10.0, description="max gradient norm; null: no clipping")
    ema_decay: float | None = Field(
        None, gt=0, lt=1,
        description="keep an exponential moving average of the weights (e.g. 0.99, as MACE's --ema) and "
        "validate, select and save the model with it; null: the raw weights",
    )
    batch_size: PositiveInt = 8
    eval_batch_size: PositiveInt | None = None
    epochs: PositiveInt = 100
    max_time_s: PositiveFloat | None = None
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dtype: Literal["float32", "float64"] = "float32"
    amp: bool = Field(
        False,
        description="training steps run the backbone's matrix products in bfloat16 (torch.autocast, CPU and CUDA); "
        "heads and validation stay in dtype. For CPUs with bfloat16 units (AMX) and GPUs; about 3 significant "
        "digits in the invariant features (docs/training.md)",
    )
    amp_padding: bool = Field(
        True,
        description="with amp on a CPU, the backbone runs on each batch graph padded to a few fixed sizes, so that "
        "oneDNN's bfloat16 kernels (built per matrix shape) are reused from batch to batch instead of rebuilt; "
        "the real atoms' features are unchanged. false: no padding (about 9 % less work, a kernel build per batch)",
    )
    output_dir: str = "runs/train"
    checkpoint_every_steps: PositiveInt | None = None
    progress: bool = True
    progress_interval_s: NonNegativeFloat = Field(
        30.0, description="without a terminal, a progress line with the loss at most this often (seconds)")
    parity_plots: bool = Field(True, description="parity plots of the best model on the test split at the end")
    tensorboard: bool = False
    compile: bool = Field(
        False,
        description="torch.compile the backbone and heads (dynamic shapes): minutes of compiling before the "
        "first step, then faster steps (docs/benchmarks.md); not for conservative models",
    )
    graph_cache: bool | Literal["auto", "memory", "disk"] = Field(
        "auto",
        description="build each structure's neighbour list and triplets once: memory (true): kept in memory after "
        "its first batch; disk: written before the first step to graph_cache_dir and memory-mapped (sets that do not "
        "fit in memory; shared by data-loader workers and reused by later runs on the same structures and graph "
        "settings); auto: memory unless the estimated cache of the split structures exceeds 4 GiB, then disk; "
        "false: rebuild every batch",
    )
    graph_cache_dir: str | None = Field(
        None,
        description="folder of the disk graph cache (relative to the config file); default: <output_dir>/graph_cache. "
        "One subfolder per set of structures and graph settings, so runs may share it",
    )
    num_workers: NonNegativeInt | Literal["auto"] = Field(
        "auto",
        description="data-loader worker processes that build the next batches' graphs while the model steps; "
        "0: in the training process; auto: 0 on the CPU, on CUDA one per spare CPU core (at most 4)",
    )

    @property
    def effective_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size


# Keys that may change between a run and its resumption; any other change is refused.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "max_time_s", "device", "progress", "progress_interval_s", "parity_plots", "tensorboard",
     "checkpoint_every_steps", "output_dir", "early_stopping", "eval_batch_size", "amp", "amp_padding", "graph_cache",
     "graph_cache_dir", "num_workers", "compile"}
)


def parse_train_config(raw: Any, source: str = "<config>") -> TrainConfig:
    """A validated :class:`TrainConfig`.

    Raises:
        ConfigError: one line naming ``source`` and each bad field path with its valid choices.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (model, data, targets, ...), got {type(raw).__name__}")
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: {format_validation_error(error, model=TrainConfig)}") from None


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML training config.

    Raises:
        ConfigError: naming the file (and line for YAML syntax errors, field path otherwise).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error.strerror or error}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    return parse_train_config(raw, str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201 - yaml's signature
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1}); give each key once",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def resolve_path(base: Path, value: str) -> Path:
    """``value`` relative to ``base`` (the config file's folder) unless it is absolute."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
