"""TensorFlow as the data modules use it: on the host only.

tf.data runs on the host: keep a GPU build of TensorFlow from claiming accelerator memory that
JAX needs. The data modules import `tf` from here, so this runs before TensorFlow initializes
its devices (a no-op with tensorflow-cpu; harmless once TF has initialized them).
"""

import tensorflow as tf

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow has initialized its devices already.
  pass

__all__ = ["tf"]
