"""A small data-parallel training setup shared by the step, parallel and checkpoint tests: a
narrow cifar_resnet20, its optimizer and step settings, and three random batches."""

import functools

import jax
import numpy as np

from configs import default
from flax_resnet import create_model, optim
from flax_resnet.parallel import AXIS, DataParallel
from flax_resnet.step import StepSettings, create_train_state, train_step


def small_step_setup(batch_size=16):
  config = default.get_config()
  config.batch_size = batch_size
  config.lr_reference_batch_size = 0
  lr = optim.create_learning_rate_fn(config, 10, 100)
  tx = optim.create_optimizer(config, lr)
  model = create_model("cifar_resnet20", num_classes=10, widths=(8, 16, 16), axis_name=AXIS)
  state = create_train_state(model, tx, (16, 16, 3), jax.random.key(0))
  settings = StepSettings(model=model, num_classes=10, tx=tx, learning_rate_fn=lr)
  step = functools.partial(train_step, settings=settings)
  rng = np.random.default_rng(0)
  batches = [dict(image=rng.normal(size=(batch_size, 16, 16, 3)).astype(np.float32),
                  label=rng.integers(0, 10, batch_size).astype(np.int32)) for _ in range(3)]
  return state, step, batches


def train_on(mode, devices, state, step, batches):
  parallel = DataParallel(mode, devices)
  mapped = parallel.map_step(step)
  state = parallel.put_state(state)
  for batch in batches:
    state, metrics = mapped(state, parallel.put_batch(batch))
  return jax.device_get(parallel.get_state(state)), parallel.get_metrics(metrics)
