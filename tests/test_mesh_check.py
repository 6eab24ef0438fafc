"""The exported mesh, rendered by Mitsuba 3, looks like the trained field.

Slow (a toy run per object, about 2 minutes each on 2 cores): trains
configs/toy.py, exports, and runs experiments/render_mesh_check.py's
comparison of the GLB and the OBJ with the field's albedo renders.
"""

import numpy as np
import pytest

from configs import toy
from dreamfusion_jax import train

mitsuba = pytest.importorskip('mitsuba')
render_mesh_check = pytest.importorskip('experiments.render_mesh_check')

# The target, over the object's mask in 128^2 turntable views.
TARGET_PSNR = 25.0


class _BelowTarget(AssertionError):
  """The PSNR target missed; a crash of the export or check is not this."""


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')
@pytest.mark.xfail(strict=True, raises=_BelowTarget, reason=(
    'The toy default runs the Stable Diffusion recipe, whose toy fields '
    'keep an outline about two pixels soft at 32x32: their renders are '
    'blurred where a mesh has a hard edge (README: sphere 20.6 dB, cube '
    '17.6 dB over the mask; inside the outline 28.3 and 25.1 dB, on the '
    'outline ring 15.9 and 13.0 dB).'))
@pytest.mark.parametrize('prompt', ['a blue sphere', 'a red cube'])
def test_exported_mesh_renders_like_the_field(prompt, tmp_path):
  config = toy.get_config()
  config.prompt = prompt
  train.train_and_export(config, str(tmp_path))
  for mesh in ('glb', 'obj'):
    psnr, _, _, _ = render_mesh_check.compare(str(tmp_path), mesh)
    if psnr.mean() < TARGET_PSNR:
      raise _BelowTarget((mesh, psnr))


def test_ring_and_interior_split_the_mask():
  """Erosion peels one pixel a step; an outline-only error spares the inside."""
  mask = np.zeros((1, 12, 12), bool)
  mask[0, 2:10, 2:10] = True
  interior = render_mesh_check._erode(mask, 2)
  assert interior.sum() == 16 and interior[0, 4:8, 4:8].all()
  error = np.where((mask & ~interior)[..., None], 0.01, 0.0) * np.ones(3)
  assert render_mesh_check._psnr(error, interior)[0] == pytest.approx(120.0)
  assert render_mesh_check._psnr(error, mask & ~interior)[0] == (
      pytest.approx(20.0))
