"""The one place that silences the libraries' Flax deprecation notices.

diffusers 0.39 logs "Flax classes are deprecated ..." from every Flax module's
`setup` (hundreds of lines per UNet init) and transformers 4.57 logs "TensorFlow
and JAX classes are deprecated ..." once. The project pins both versions on
purpose (DESIGN.md section 8), so these notices carry no news. Only those
messages are dropped; every other warning of the libraries is kept.

Import this module before diffusers or transformers models are built:
`guidance/stable_diffusion.py` does, and so should any other module that uses
them: `from dreamfusion_jax.guidance import quiet` (unused-import is fine).
"""

import logging

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

# Substrings of the deprecation notices of diffusers and transformers.
_NOTICES = (
    'Flax classes are deprecated',
    'TensorFlow and JAX classes are deprecated',
)


class _DropFlaxDeprecation(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(notice in message for notice in _NOTICES)


_FILTER = _DropFlaxDeprecation()


def install() -> None:
  """Adds the filter to the libraries' log handlers (idempotent).

  The libraries log from per-module child loggers whose records reach the
  library root logger's handlers, and a logger's own filters do not see
  records of its children, so the filter sits on the handlers. Call again
  after replacing those handlers.
  """
  for library in (diffusers_logging, transformers_logging):
    root = library.get_logger()  # Creates the library's default handler.
    while root.name.count('.'):
      root = root.parent
    for handler in root.handlers:
      if _FILTER not in handler.filters:
        handler.addFilter(_FILTER)
    # With propagation on (transformers does so under CI), records also reach
    # the root logger's handlers.
    if root.propagate:
      for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
          handler.addFilter(_FILTER)


install()
