"""Writing files so that a crash never leaves a truncated one.

Every output of the project (config.json, images, videos, meshes, results)
is written to a temporary file beside its destination and renamed over it
when complete: a reader sees the old file or the new one, never half of one.
"""

import contextlib
import json
import os
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path; on success, that file replaces `path`.

  The temporary name keeps the extension, since image and video writers
  choose the format from it. Parent folders are created. On an exception
  the temporary file is removed and `path` is left as it was.
  """
  root, ext = os.path.splitext(os.fspath(path))
  tmp = f'{root}.tmp{ext}'
  os.makedirs(os.path.dirname(os.path.abspath(tmp)), exist_ok=True)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes(path: str, data: bytes) -> str:
  """Writes `data` to `path` atomically; returns path."""
  with atomic_path(path) as tmp, open(tmp, 'wb') as f:
    f.write(data)
  return path


def write_json(path: str, obj: Any) -> str:
  """Writes `obj` as indented JSON to `path` atomically; returns path."""
  return write_bytes(path, (json.dumps(obj, indent=2) + '\n').encode())
