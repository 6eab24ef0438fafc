"""What every launcher in experiments/ shares: error reporting and set-up.

A `UserError` becomes one line on stderr and exit status 2, with no
traceback: the sentence already says what is wrong and how to fix it.

On Linux with glibc 2.35 or later a launcher restarts itself once with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1: malloc then asks for transparent
huge pages on its mappings. XLA on a CPU allocates each step's temporaries
(tens to hundreds of MB) with malloc, and glibc returns such large blocks
to the kernel when they are freed, so every step faulted them in again
4 KiB at a time; with 2 MiB pages the toy step runs about 1.3x faster
(README, "Measured"). It changes no result. DREAMFUSION_HUGE_PAGES=0
turns it off; a GLIBC_TUNABLES that already names glibc.malloc.hugetlb is
left as it is.
"""

import json
import logging as std_logging
import os
import platform
import subprocess
import sys

from absl import app
from absl import flags
from absl import logging

from dreamfusion_jax import errors


def maybe_initialize_distributed(config) -> None:
  """Joins the multi-process runtime first when `config.multihost` is set.

  On TPU pods and SLURM clusters JAX finds its peers itself. Elsewhere set
  JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  if not config.multihost:
    return
  import jax  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if 'JAX_NUM_PROCESSES' in os.environ:
    kwargs['num_processes'] = int(os.environ['JAX_NUM_PROCESSES'])
  if 'JAX_PROCESS_ID' in os.environ:
    kwargs['process_id'] = int(os.environ['JAX_PROCESS_ID'])
  jax.distributed.initialize(**kwargs)


def _main_or_exit(main):
  def wrapped(argv):
    try:
      return main(argv)
    except errors.UserError as e:
      _exit(str(e))
  return wrapped


class _DropLibraryChatter(std_logging.Filter):
  """Drops INFO records of orbax, whose per-save details drown the log."""

  def filter(self, record):
    return record.levelno > std_logging.INFO or '/orbax/' not in record.pathname


def _innermost_user_error(error):
  """The first UserError raised under `error`, or None.

  A config file's own check of its argument (configs/toy_biased.py:<level>)
  reaches the flag parser re-raised by ml_collections with its traceback
  folded into the message; the first one carries the sentence alone.
  """
  found = None
  while error is not None:
    if isinstance(error, errors.UserError):
      found = error
    error = error.__cause__ or error.__context__
  return found


def _parse_flags(argv):
  """absl's flag parsing, with a bad --config.<field> as one sentence."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    user_error = _innermost_user_error(e)
    _exit(str(user_error) if user_error else
          f'{e}; run with --helpfull for the flags.')
  except (AttributeError, KeyError) as e:
    # ml_collections reports an unknown field of a locked config this way.
    names = [a.split('=', 1)[0] for a in argv[1:] if a.startswith('--config.')]
    field = str(e).strip('"\'')
    bad = [n for n in names if n.split('.')[-1] == field] or names
    _exit(f'{bad[0] if bad else field} is not a config field; see '
          'configs/default.py for every field.')
  except (ValueError, TypeError) as e:
    _exit(f'a --config override could not be applied ({e}); check its '
          'value and type against configs/default.py.')


def _exit(sentence: str):
  print(f'error: {sentence}', file=sys.stderr, flush=True)
  sys.exit(2)


_HUGE_PAGES = 'glibc.malloc.hugetlb'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def huge_page_tunables(environ, libc=None, thp_setting=None):
  """The GLIBC_TUNABLES value to restart with, or None to run as is.

  None when DREAMFUSION_HUGE_PAGES is 0, when the tunables already name
  glibc.malloc.hugetlb, when the C library is not glibc 2.35 or later, or
  when the kernel's transparent huge pages are off ('[never]').
  """
  if environ.get('DREAMFUSION_HUGE_PAGES', '1') == '0':
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if _HUGE_PAGES in tunables:
    return None
  name, version = libc if libc is not None else platform.libc_ver()
  try:
    major_minor = tuple(int(v) for v in version.split('.')[:2])
  except ValueError:
    return None
  if name != 'glibc' or major_minor < (2, 35):
    return None
  if thp_setting is None:
    try:
      with open(_THP_SETTING, encoding='ascii') as f:
        thp_setting = f.read()
    except OSError:
      return None
  if '[never]' in thp_setting:
    return None
  return ':'.join(t for t in (tunables, _HUGE_PAGES + '=1') if t)


def _restart_with_huge_pages() -> None:
  """Re-executes this launcher once with huge pages for malloc (above)."""
  tunables = huge_page_tunables(os.environ)
  if tunables is None or not getattr(sys, 'orig_argv', None):
    return
  os.environ['GLIBC_TUNABLES'] = tunables
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable] + sys.orig_argv[1:])


def run(main) -> None:
  """`absl.app.run(main)` with UserError reported as one sentence."""
  _restart_with_huge_pages()
  logging.get_absl_handler().addFilter(_DropLibraryChatter())
  app.run(_main_or_exit(main), flags_parser=_parse_flags)


# Prefix of the line a worker process prints its JSON result on.
WORKER_RESULT = 'BENCHMARK_RESULT '


def print_worker_result(result: dict) -> None:
  """Prints `result` as the line `run_worker` reads back."""
  print(WORKER_RESULT + json.dumps(result), flush=True)


def run_worker(script: str, args, env=None):
  """Runs `python script *args` and reads its `print_worker_result` line.

  Returns:
    (result dict, or None when the process failed or printed none; the
    last line of its stderr, for the message).
  """
  proc = subprocess.run([sys.executable, os.path.abspath(script), *args],
                        env=env, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(WORKER_RESULT)]
  if proc.returncode == 0 and lines:
    return json.loads(lines[-1][len(WORKER_RESULT):]), ''
  sys.stderr.write(proc.stderr[-3000:])
  last = (proc.stderr.strip().splitlines() or ['no output'])[-1]
  return None, f'exit status {proc.returncode}: {last[:300]}'
