"""What every launcher in experiments/ shares: error reporting and set-up.

A `UserError` becomes one line on stderr and exit status 2, with no
traceback: the sentence already says what is wrong and how to fix it.
"""

import json
import logging as std_logging
import os
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


def run(main) -> None:
  """`absl.app.run(main)` with UserError reported as one sentence."""
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
