"""Training: the trainer, many trials side by side, the paper's stopping criteria, and atomic
checkpoints."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .construction import SequentialConstruction
from .criteria import RecentSequences, TestSet, st3
from .trainer import TrainConfig, Trainer, TrainingDiverged, TrainResult
from .trials import train_trials

__all__ = [
    "CheckpointError",
    "RecentSequences",
    "SequentialConstruction",
    "TestSet",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "load_checkpoint",
    "save_checkpoint",
    "st3",
    "train_trials",
]
