"""Which example goes to which host and step: per-host batches, seeds, epoch permutations and
the padding of evaluation.

- Multi-host: each process reads a disjoint, equal slice of the training data, so every host
  has the same steps per epoch. Evaluation splits the eval set without dropping anything; every
  host pads its tail to the same number of batches and marks real examples with `mask` (1.0) and
  padding with 0.0, so metrics cover each example exactly once and collectives see the same
  number of batches on every host.
- Deterministic and resumable: batch k is a function of (seed, process layout, k) only. Where
  examples can be read by index, epoch e is the exact random permutation
  `index_shuffle(., key(seed, host, e))` and each batch's augmentation is keyed on its step, so
  batch k is computed directly, without the batches before it. All randomness is stateless.
"""

from __future__ import annotations

import jax
import numpy as np

from flax_resnet.data.tf_cpu_only import tf
from flax_resnet.errors import DataError
from flax_resnet.parallel import split_evenly


def process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(process_index, process_count): the given ones, else JAX's."""
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
  return process_index, process_count


def per_host_batch(global_batch: int, process_count: int, field: str) -> int:
  """The batch of one host: `global_batch` (config.`field`) split evenly over the processes."""
  return split_evenly(global_batch, process_count, field,
                      f"the {process_count} processes (hosts) of this run")


def train_batch(config, process_count: int) -> int:
  return per_host_batch(config.batch_size, process_count, "batch_size")


def eval_batch(config, process_count: int) -> int:
  """config.eval_batch_size (0: config.batch_size), per host."""
  if config.eval_batch_size:
    return per_host_batch(config.eval_batch_size, process_count, "eval_batch_size")
  return per_host_batch(config.batch_size, process_count, "batch_size")


def check_batch_fits(batch: int, num_examples: int, where: str) -> None:
  """DataError unless a host's `num_examples` training examples hold one per-host batch."""
  if num_examples < batch:
    raise DataError(f"the per-host batch {batch} is larger than this host's {num_examples} "
                    f"training examples of {where}; lower config.batch_size")


def derive_seed(*ints: int) -> int:
  """A 31-bit seed derived from integers (seed, process, epoch): distinct tuples, distinct seeds."""
  return int(np.random.SeedSequence([int(i) for i in ints]).generate_state(1)[0] >> 1)


def permuted_batch(host_key: tf.Tensor, step, epoch_steps: int, batch: int,
                   num_examples: int):
  """Indices of training batch `step` in an exact random permutation of each epoch, and the
  step's augmentation seed: both functions of (host_key, step) alone, so a resumed run
  computes batch k directly."""
  epoch = step // epoch_steps
  positions = (step - epoch * epoch_steps) * batch + tf.range(batch, dtype=tf.int64)
  epoch_key = tf.random.experimental.stateless_fold_in(host_key, epoch)
  order_key, augment_key = tf.unstack(tf.random.experimental.stateless_split(epoch_key, 2))
  indices = tf.random.experimental.index_shuffle(
      positions, order_key, tf.constant(num_examples - 1, tf.int64))
  return indices, tf.random.experimental.stateless_fold_in(augment_key, step)


def padded_batches(ds: tf.data.Dataset, count: int, num_batches: int,
                   batch: int) -> tf.data.Dataset:
  """`ds` (`count` examples with a 'mask' of 1.0) followed by all-zero examples (mask 0.0) up to
  `num_batches` full batches of `batch`."""
  padding = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_batches * batch - count))
  return ds.batch(batch, drop_remainder=True)


def options() -> tf.data.Options:
  """tf.data options of every pipeline: parallel map and interleave keep their input order."""
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  options.threading.max_intra_op_parallelism = 1
  return options
