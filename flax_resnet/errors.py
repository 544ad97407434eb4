"""The errors a user can cause and fix (as opposed to bugs): train.py prints their message
alone, without a traceback."""

from flax_resnet.checkpointing import CheckpointError
from flax_resnet.config_check import ConfigError
from flax_resnet.trainer import TrainingDiverged

USER_ERRORS = (ConfigError, CheckpointError, TrainingDiverged, FileNotFoundError,
               NotADirectoryError, PermissionError, ValueError)
