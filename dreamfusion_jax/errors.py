"""The one exception type for problems the user can fix.

Library code raises `UserError` with one sentence that names the problem and
the fix; the launchers print that sentence and exit non-zero, without a
traceback and without touching existing outputs.
"""


class UserError(ValueError):
  """Bad input (config, paths, missing weights) with a one-sentence fix."""
