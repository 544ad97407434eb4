"""Trains a ResNet: `python train.py --config=configs/resnet50.py --workdir=DIR`.

Any config field can be overridden: `--config.batch_size=1024 --config.num_epochs=1`.
Starting again on the same workdir resumes from its newest checkpoint. The loop itself is
`flax_resnet.train_and_evaluate`, importable from a notebook.
"""

import os
import sys
import threading
import time
import traceback

# TensorFlow only feeds data here: no logging from it, and no oneDNN kernels (for matmuls and
# convolutions, which the input pipeline does not run) with their start-up notice.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

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


# How long the process waits at its end for threads a library left running. After a failed
# checkpoint save, orbax's waiting threads would hold the process for minutes (their signals
# never come); a run that has said how it ended exits within this bound instead.
EXIT_GRACE_S = 10.0
INTERRUPTED = 130  # the exit status of a program stopped by Ctrl-C


def fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def exit_bounded(code: int):
  """Exits with `code`, waiting at most EXIT_GRACE_S for the threads still running."""
  sys.stdout.flush()
  sys.stderr.flush()
  deadline = time.monotonic() + EXIT_GRACE_S
  for thread in threading.enumerate():
    if thread is not threading.main_thread() and not thread.daemon:
      # the plain join: orbax's threads override join() to raise on a timeout
      threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))
  if any(t.is_alive() and not t.daemon for t in threading.enumerate()
         if t is not threading.main_thread()):
    os._exit(code)  # noqa: SLF001 - the interpreter's exit would join them without a bound
  sys.exit(code)


def _message(error: Exception) -> str:
  """An exception's text in one line; ml_collections nests quotes and newlines in KeyErrors."""
  text = str(error.args[0] if error.args else error)
  while isinstance(error, (KeyError, AttributeError)) and text[:1] in "'\"" and len(text) > 1:
    text = text[1:-1]
  return " ".join(text.replace("\\n", "\n").replace("\\'", "'").split())


def parse_flags(argv):
  """absl's flag parsing, with one line, not a traceback, for a missing config file or an
  override of a field the config does not have."""
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].split(":")[0]
      if not os.path.isfile(path):
        fail(f"--config={path}: no such config file (the experiments are in configs/)")
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(_config_file_error(e, argv) or f"{e}; see --helpshort")
  except (AttributeError, KeyError) as e:  # ml_collections: an unknown field in an override
    fail(f"--config: {_message(e)}")


def _config_file_error(error: Exception, argv) -> str | None:
  """What the config file's get_config raised (a misspelled variant), in one line: the flag's
  error carries it with its traceback, as the end of its chain of exceptions."""
  inner = error
  while inner.__context__ is not None:
    inner = inner.__context__
  value = next((a.split("=", 1)[1] for a in reversed(argv[1:]) if a.startswith("--config=")),
               None)  # the last one, which absl takes
  if inner is error or value is None:
    return None
  path, _, variant = value.partition(":")
  frames = traceback.extract_tb(inner.__traceback__)
  if not any("get_config(" in (f.line or "") for f in frames):
    return None  # not raised by (or at the call of) the config file's get_config
  if isinstance(inner, TypeError) and "get_config(" in (frames[-1].line or "") and variant:
    return f"--config={value}: {path} takes no variant ':{variant}'"  # no such parameter
  return f"--config={value}: {_message(inner)}"


def final_line(result: dict) -> str:
  """What a run ended with: its last evaluation, and how it stopped."""
  if result.get("stopped_by"):
    last = (f"last eval accuracy {result['eval_accuracy']:.4f} at step {result['eval_step']}"
            if "eval_accuracy" in result else "no evaluation yet")
    return (f"stopped: {result['stopped_by']} at step {result['steps']} of "
            f"{result['num_train_steps']} (checkpoint saved; run the same command to resume); "
            f"{last}")
  if "eval_accuracy" not in result:
    return f"final: {result['steps']} steps, no evaluation"
  ema = (f" (EMA weights: {result['ema_eval_accuracy']:.4f})"
         if "ema_eval_accuracy" in result else "")
  return (f"final: eval accuracy {result['eval_accuracy']:.4f}{ema} after {result['steps']} "
          "steps")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  from flax_resnet.cpu import configure_cpu
  from flax_resnet.errors import USER_ERRORS
  from flax_resnet.parallel import initialize_distributed

  try:
    # On CPU: one device per core and the faster convolution library for this CPU
    # (flax_resnet.cpu; FLAX_RESNET_CONVOLUTIONS overrides).
    configure_cpu()
    from flax_resnet.loop import train_and_evaluate
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    result = train_and_evaluate(config, FLAGS.workdir)
  except USER_ERRORS as e:
    if FLAGS.traceback:
      traceback.print_exc()
    else:
      print(f"error: {e}", file=sys.stderr)
    exit_bounded(1)
  except KeyboardInterrupt:  # Ctrl-C outside the training steps, or a second one
    print("error: interrupted (Ctrl-C); the checkpoints are as the last completed save left "
          "them: run the same command to resume", file=sys.stderr)
    exit_bounded(INTERRUPTED)
  except Exception:  # a bug: its traceback, and the same bounded exit
    traceback.print_exc()
    exit_bounded(1)
  print(final_line(result))
  # Ctrl-C during training saves and stops like SIGTERM, but exits as an interrupted
  # program does (128 + SIGINT), so that a calling script stops too.
  exit_bounded(INTERRUPTED if result.get("stopped_by") == "SIGINT" else 0)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
