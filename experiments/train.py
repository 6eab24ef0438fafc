r"""Text to 3D: trains a NeRF for a prompt with Score Distillation Sampling.

  python experiments/train.py --config=configs/toy.py --workdir=/tmp/toy
  python experiments/train.py --config=configs/dreamfusion_sd.py \
      --workdir=/tmp/corgi --config.prompt="a DSLR photo of a corgi"

Several objects (prompts x seeds) train together in one program, each in
its own folder <workdir>/<prompt>/seed_<seed>:

  python experiments/train.py --config=configs/toy.py --workdir=/tmp/batch \
      --config.prompts="('a red cube','a blue sphere')" \
      --config.seeds="(0,1,2)"
  python experiments/train.py --config=configs/dreamfusion_sd.py \
      --workdir=/tmp/assets --config.prompts_file=prompts.txt

Any config field can be overridden with --config.<field>=<value>. Running the
same command again resumes from the newest checkpoint in --workdir.
"""

import os
import sys

# Config files import `configs.default` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dreamfusion_jax import launch

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder of the run.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  config = _CONFIG.value
  launch.maybe_initialize_distributed(config)
  # pylint: disable=g-import-not-at-top
  from dreamfusion_jax import object_batch
  from dreamfusion_jax import train
  from dreamfusion_jax import train_objects
  # pylint: enable=g-import-not-at-top
  if object_batch.is_batch(config):
    train_objects.train_batch(config, _WORKDIR.value)
  else:
    train.train_and_export(config, _WORKDIR.value)
  logging.info('Done: %s', _WORKDIR.value)


if __name__ == '__main__':
  launch.run(main)
