"""Settings shared by every process of a test session.

One persistent XLA compilation cache per session: the suite starts many
processes (pytest-xdist workers, launcher subprocesses) that compile the
same tiny training steps, and each compiled step is stored once and loaded
by the others. Results do not depend on it; JAX keys each entry by the
program and its compile options. A cache set by the caller
(JAX_COMPILATION_CACHE_DIR) is used as it is and kept.
"""

import os
import shutil
import tempfile

_OWNED = '_DREAMFUSION_JAX_TEST_CACHE'

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  # Set before jax is imported, and inherited by xdist workers and by the
  # subprocesses the tests start (they copy os.environ).
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='dreamfusion_jax_xla_cache_')
  os.environ[_OWNED] = str(os.getpid())


def pytest_unconfigure(config):
  del config
  if os.environ.get(_OWNED) == str(os.getpid()):
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
