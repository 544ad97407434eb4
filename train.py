"""Trains a ResNet: `python train.py --config=configs/resnet50.py --workdir=DIR`.

Any config field can be overridden: `--config.batch_size=1024 --config.num_epochs=1`.
Starting again on the same workdir resumes from its newest checkpoint. The loop itself is
`flax_resnet.train_and_evaluate`, importable from a notebook.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow only feeds data here

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/resnet50.py",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and plots go")
flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
flags.DEFINE_bool("traceback", False, "show the full traceback of an error")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  from flax_resnet.cpu import configure_cpu
  from flax_resnet.errors import USER_ERRORS
  from flax_resnet.parallel import initialize_distributed
  # On CPU: one device per core, so the data-parallel step uses every core, and the faster
  # convolution library for this CPU (flax_resnet.cpu; FLAX_RESNET_CONVOLUTIONS overrides).
  try:
    configure_cpu()
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  from flax_resnet.trainer import train_and_evaluate
  from flax_resnet.errors import USER_ERRORS

  try:
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    if FLAGS.traceback:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if "eval_accuracy" in result:
    print(f"final: eval accuracy {result['eval_accuracy']:.4f} after {result['steps']} steps")


if __name__ == "__main__":
  app.run(main)
