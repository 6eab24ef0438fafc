r"""Exports a trained run: turntable videos, a contact sheet and meshes.

  python experiments/export.py --workdir=/tmp/toy [--step=N] \
      [--num_frames=120] [--resolution=256] [--mesh_threshold=-1] \
      [--texture_size=1024] [--target_faces=0]

Reads `<workdir>/config.json` and the newest (or the given) checkpoint, and
writes mp4/gif/png turntables (rgb, normals, textureless, depth), a textured
mesh (GLB; OBJ + MTL + texture.png) and a vertex-coloured PLY to
`<workdir>/export/` (or --out). Export keys that a run's config.json lacks
(it predates them) take their defaults.
"""

import os
import sys

# Config files import `configs.default` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags
from absl import logging

from configs import default
from dreamfusion_jax import launch

_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder of a training run.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default newest).')
_OUT = flags.DEFINE_string('out', None, 'Output folder (default '
                           '<workdir>/export).')
_FRAMES = flags.DEFINE_integer('num_frames', None, 'Turntable frames.')
_RESOLUTION = flags.DEFINE_integer('resolution', None, 'Frame size.')
_ELEVATION = flags.DEFINE_float('elevation', None, 'Turntable elevation.')
_THRESHOLD = flags.DEFINE_float('mesh_threshold', None,
                                'Density iso-level (< 0: automatic).')
_MESH_RES = flags.DEFINE_integer('mesh_resolution', None, 'Grid size.')
_TEXTURE = flags.DEFINE_integer('texture_size', None, 'Texture side (px).')
_FACES = flags.DEFINE_integer('target_faces', None,
                              'Decimate to this many faces (0: keep all).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  from dreamfusion_jax import export  # pylint: disable=g-import-not-at-top
  from dreamfusion_jax import runs  # pylint: disable=g-import-not-at-top
  config, model, params, step = runs.load_trained(_WORKDIR.value, _STEP.value)
  for name, value in default.get_config().export.items():
    if name not in config.export:
      config.export[name] = value
  overrides = {'num_frames': _FRAMES.value, 'resolution': _RESOLUTION.value,
               'elevation': _ELEVATION.value,
               'mesh_threshold': _THRESHOLD.value,
               'mesh_resolution': _MESH_RES.value,
               'texture_size': _TEXTURE.value, 'target_faces': _FACES.value}
  for name, value in overrides.items():
    if value is not None:
      config.export[name] = value
  out = _OUT.value or os.path.join(_WORKDIR.value, 'export')
  paths = export.export_all(config, model, params, out)
  logging.info('Step %d: wrote %d files to %s.', step, len(paths), out)
  for path in paths:
    print(path)


if __name__ == '__main__':
  launch.run(main)
