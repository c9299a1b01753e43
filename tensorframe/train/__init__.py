"""Training: ``tensorframe train CONFIG.yaml`` and its pieces.

    config.py       the validated YAML config (TrainConfig)
    data.py         reading, splitting, checking data; normalisation; batching labels
    loss.py         Euclidean / MSE / MAE losses on normalised errors; metrics
    trainer.py      the loop: checkpoints, resume, early stopping, logs
    distributed.py  torchrun / DistributedDataParallel
    logging.py      CSV log, TensorBoard, progress bar
    state.py        random-number-generator states for checkpoints
"""

from tensorframe.train.config import TrainConfig, load_train_config, parse_train_config
from tensorframe.train.data import DataError
from tensorframe.train.trainer import Trainer, TrainingError, TrainResult, train

__all__ = ["DataError", "TrainConfig", "TrainResult", "Trainer", "TrainingError", "load_train_config",
           "parse_train_config", "train"]
