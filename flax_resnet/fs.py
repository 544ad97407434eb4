"""File access on the user's paths, local or in an object store (gs://bucket/...), alike.

Everything the library reads or writes at a path the user gave (the work directory, its
checkpoints, metrics.jsonl and curves.png, config.data_dir, an image folder) goes through
`etils.epath`: local paths behave as with the os module (`~` expanded, made absolute), and
gs:// paths go to Google Cloud Storage through tf.io.gfile (epath's backend for gs:// whenever
TensorFlow is installed, as it is for training). orbax uses epath for its folders as well, and
tensorstore for the arrays.

Object stores have no folders that exist on their own, no appends and no atomic renames of
folders; the callers write whole objects (reporting.py rewrites metrics.jsonl whole).
"""

from __future__ import annotations

from etils import epath


def is_remote(path) -> bool:
  """True for an object-store path such as gs://bucket/run."""
  return "://" in str(path)


def user_path(path) -> epath.Path:
  """`path` as an epath.Path: a local one with ~ expanded and made absolute, a gs:// one as
  given."""
  if is_remote(path):
    return epath.Path(str(path))
  return epath.Path(str(path)).expanduser().absolute()


def bucket_of(path) -> str | None:
  """'gs://bucket' for gs://bucket/run, None for a local path."""
  text = str(path)
  if not is_remote(text):
    return None
  scheme, rest = text.split("://", 1)
  return f"{scheme}://{rest.split('/', 1)[0]}"


def storage_problem(error: Exception) -> str:
  """What an error of the storage clients (OSError, TensorFlow's OpError) means, in words."""
  name = type(error).__name__
  text = " ".join(str(error).split())[:300] or name
  if isinstance(error, PermissionError) or "PermissionDenied" in name or " 403" in text:
    return f"no permission ({text}); check the account's access, e.g. `gcloud auth list`"
  if isinstance(error, FileNotFoundError) or "NotFound" in name:
    return f"not found ({text})"
  return text


def check_bucket(path, what: str, error_class) -> None:
  """Raises `error_class` (a UserError) in one line if the bucket of the gs:// `path` does not
  exist or cannot be read. Checked first because tf.io.gfile.makedirs retries forever on a
  missing bucket."""
  bucket = bucket_of(path)
  if bucket is None:
    return
  try:
    exists = epath.Path(bucket).exists()
  except Exception as e:  # noqa: BLE001 - any client error: report it in one line
    raise error_class(f"{what}={path}: cannot read bucket {bucket}: {storage_problem(e)}") from None
  if not exists:
    raise error_class(f"{what}={path}: bucket {bucket} does not exist (or this account cannot "
                      f"see it); create it with `gcloud storage buckets create {bucket}`, or "
                      "check the name")


def write_problem(folder: epath.Path, probe_name: str) -> str | None:
  """Why the folder cannot be made or written to, in words, or None where it can: makes it,
  then writes and deletes the empty file `probe_name` in it (name it per process: on a pod
  every host probes the same shared folder at once)."""
  if folder.exists() and not folder.is_dir():
    return "a file of that name is in the way"
  try:
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / probe_name
    probe.write_text("")
    probe.unlink()
  except Exception as e:  # noqa: BLE001 - OSError locally, TensorFlow's OpError on gs://
    return e.strerror if isinstance(e, OSError) and e.strerror else storage_problem(e)
  return None
