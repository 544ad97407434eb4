"""Our training step as train.py runs it, fed batch by batch, beside a PyTorch twin.

`OurTrainer(config)` builds what flax_resnet.loop builds for a run of `config` (the model
with the backend's overrides and synchronized BatchNorm, the optimizer and schedule, the
data-parallel step over every device) and takes one step per `step(images, labels)` call on
batches the caller gives, so a PyTorch copy (reproduce/torch_twin.py) can be fed the same
ones. tests/test_against_pytorch.py and reproduce/first_steps.py use it.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from flax_resnet import loop, optim
from flax_resnet.parallel import DataParallel
from flax_resnet.step import StepSettings, create_train_state, train_step


class OurTrainer:
  """The training of `config` (its model, optimizer, schedule, seed and parallelism) on
  batches given one at a time. The schedule has `num_steps` steps of `steps_per_epoch`
  (default: all in one epoch)."""

  def __init__(self, config, num_classes: int, image_shape, num_steps: int,
               steps_per_epoch: int | None = None):
    self.model = loop.build_model(config, num_classes)
    self.learning_rate_fn = optim.create_learning_rate_fn(
        config, steps_per_epoch or num_steps, num_steps)
    tx = optim.create_optimizer(config, self.learning_rate_fn)
    self._tx = tx
    state = create_train_state(self.model, tx, image_shape, jax.random.key(config.seed))
    self.parallel = DataParallel(config.parallelism)
    self.parallel.check_batch_size(config.batch_size)
    self._state = self.parallel.put_state(state)
    settings = StepSettings.from_config(config, self.model, tx, self.learning_rate_fn,
                                        num_classes)
    self._step = self.parallel.map_step(functools.partial(train_step, settings=settings))

  @property
  def variables(self) -> dict:
    """The current {'params', 'batch_stats'} as host float64 arrays."""
    state = self.parallel.get_state(self._state)
    return jax.tree.map(lambda x: np.asarray(x, np.float64),
                        {"params": state.params, "batch_stats": state.batch_stats})

  def restart_from(self, variables: dict) -> None:
    """Starts again from `variables` ({'params', 'batch_stats'}), the optimizer afresh."""
    state = self.parallel.get_state(self._state)
    self._state = self.parallel.put_state(state.replace(
        step=jax.numpy.zeros_like(state.step), params=variables["params"],
        batch_stats=variables["batch_stats"], opt_state=self._tx.init(variables["params"])))

  def step(self, images: np.ndarray, labels: np.ndarray) -> dict:
    """One step on NHWC float32 `images`; the step's metrics (loss before the update)."""
    batch = self.parallel.put_batch({"image": np.asarray(images, np.float32),
                                     "label": np.asarray(labels, np.int32)})
    self._state, metrics = self._step(self._state, batch)
    return {k: float(v) for k, v in self.parallel.get_metrics(metrics).items()}
