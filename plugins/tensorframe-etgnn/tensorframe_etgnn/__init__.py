"""ETGNN backbone for tensorframe: ``backbone: {name: etgnn}``."""

from tensorframe_etgnn.config import ETGNNConfig
from tensorframe_etgnn.model import ETGNN, build_etgnn

__all__ = ["ETGNN", "ETGNNConfig", "build_etgnn"]
