"""The errors a user can cause and fix, as opposed to bugs.

train.py prints the message of a `UserError` alone, in one line, without a traceback (its
`--traceback` flag shows it). Every other exception, whether raised by this project by
mistake or by JAX, Flax, orbax or TensorFlow, is a bug until shown otherwise and keeps its
traceback.
"""


class UserError(Exception):
  """A problem the user can fix; the message names it and says what to do."""


class ConfigError(UserError, ValueError):
  """A config that cannot run: an unknown field or name, or a value out of range."""


class DataError(UserError):
  """A dataset that is missing, unprepared or unreadable (a bad image file, a wrong folder)."""


class CheckpointError(UserError):
  """A checkpoint or work directory that cannot serve this run."""


class TrainingDiverged(UserError):
  """The loss became NaN or infinite; the last good checkpoint is left as it was."""


USER_ERRORS = (UserError,)
