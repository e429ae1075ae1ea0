"""The errors that reach a user as one clear line (no traceback): bad data, config, weights, checkpoints."""
from sasrecllm_jax.config import ConfigError
from sasrecllm_jax.data.dataset import DataError
from sasrecllm_jax.train.checkpoint import CheckpointError
from sasrecllm_jax.train.partition import PartitionError
from sasrecllm_jax.weights.convert import WeightsError


def _training_error():
    from sasrecllm_jax.train.loop import TrainingError
    return TrainingError


KNOWN_ERRORS = (ConfigError, DataError, CheckpointError, PartitionError, WeightsError, _training_error())
