"""Every config file loads, validates, documents its command, adds no field."""

import importlib.util
import pathlib

import pytest

from configs import default
from dreamfusion_jax import train

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG_FILES = sorted(p for p in (ROOT / 'configs').glob('*.py')
                      if p.name != '__init__.py')


def _load(path):
  """Imports a config file by path, as ml_collections' config_flags does."""
  spec = importlib.util.spec_from_file_location(f'_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _flat_keys(config, prefix=''):
  keys = set()
  for key, value in config.items():
    if hasattr(value, 'items'):
      keys |= _flat_keys(value, f'{prefix}{key}.')
    else:
      keys.add(f'{prefix}{key}')
  return keys


def _ids(paths):
  return [p.stem for p in paths]


def test_all_expected_configs_exist():
  names = {p.stem for p in CONFIG_FILES}
  assert {'default', 'toy', 'tiny', 'dreamfusion_sd', 'paper'} <= names


@pytest.mark.parametrize('path', CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_config_validates(path):
  config = _load(path).get_config()
  train.validate_config(config)


@pytest.mark.parametrize('path', CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_config_adds_no_field(path):
  keys = _flat_keys(_load(path).get_config())
  reference = _flat_keys(default.get_config())
  assert keys == reference, (
      f'{path.name}: extra {sorted(keys - reference)}, '
      f'missing {sorted(reference - keys)}')


@pytest.mark.parametrize('path', CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_docstring_holds_the_command(path):
  module = _load(path)
  doc = ' '.join((module.__doc__ or '').replace('\\\n', ' ').split())
  assert (f'python experiments/train.py --config=configs/{path.name}'
          in doc), f'{path.name} docstring lacks its command'
  assert '--workdir=' in doc


def test_stable_diffusion_config_values():
  config = _load(ROOT / 'configs' / 'dreamfusion_sd.py').get_config()
  assert config.render.resolution == 64
  assert config.num_steps == 10000
  assert config.guidance.scale == 101.0  # threestudio's 100.
  assert (config.guidance.t_min, config.guidance.t_max) == (0.02, 0.98)
  assert config.nerf.field == 'hashgrid'
  # Cameras stay outside the bounding sphere.
  assert config.camera.distance_range[0] > config.render.scene_radius
  lo, hi = config.camera.focal_range
  assert lo == pytest.approx(0.714, abs=1e-3)
  assert hi == pytest.approx(1.374, abs=1e-3)
  assert config.camera.elevation_range == (-10.0, 45.0)
  assert config.shading.albedo_steps == 2000
  # threestudio's dreamfusion-sd (PAPER_NOTES.md).
  assert (config.nerf.density_activation, config.nerf.blob) == (
      'softplus', 'magic3d')
  assert (config.nerf.blob_density, config.nerf.blob_radius) == (10.0, 0.5)
  assert (config.nerf.hash_start_levels, config.nerf.hash_level_start_step,
          config.nerf.hash_level_every_steps) == (8, 2000, 500)
  assert (config.loss.opacity_weight, config.loss.entropy_weight) == (1.0, 0)
  assert (config.loss.orientation_weight_start,
          config.loss.orientation_weight_end) == (10.0, 1000.0)
  assert config.loss.orientation_normalize == 'opaque'
  assert config.loss.orientation_ramp_shape == 'linear'
  assert config.optim.grad_clip == 0.0
  assert config.optim.background_lr_multiplier == 0.1
  assert config.optim.final_learning_rate == 1e-3  # Cosine (README).
  assert config.guidance.dtype == 'auto'
  doc = _load(ROOT / 'configs' / 'dreamfusion_sd.py').__doc__
  assert '--config.prompt="a DSLR photo of a corgi"' in doc


def test_paper_config_values():
  config = _load(ROOT / 'configs' / 'paper.py').get_config()
  assert config.num_steps == 15000
  assert config.guidance.scale == 101.0  # The paper's omega = 100.
  assert config.optim.learning_rate == 1e-4
  assert config.optim.warmup_steps == 3000
  assert config.optim.final_learning_rate == 1e-6
  ramp_steps = config.loss.orientation_ramp_fraction * config.num_steps
  assert ramp_steps == pytest.approx(5000)
  assert config.camera == default.get_config().camera


# Keys where configs/toy.py may differ from configs/dreamfusion_sd.py: what
# the exact prior needs instead of Stable Diffusion, and what a 2-core CPU
# needs (README, "The toy world runs the Stable Diffusion recipe").
TOY_DIFFERS = {
    # The exact prior.
    'prompt', 'guidance.model', 'guidance.scale', 'guidance.t_max_end',
    'toy.background_colors', 'shading.random_background_colors',
    'loss.orientation_weight_start',
    'loss.orientation_weight_end', 'loss.opacity_weight',
    'camera.distance_range', 'camera.focal_range', 'camera.eval_distance',
    'camera.position_jitter', 'camera.target_jitter', 'camera.up_jitter',
    # The CPU.
    'num_steps', 'shading.albedo_steps', 'nerf.hash_level_start_step',
    'nerf.hash_level_every_steps', 'render.resolution', 'render.num_samples',
    'render.occupancy_samples', 'render.occupancy_resolution',
    'nerf.hash_log2_table_size', 'nerf.hash_max_resolution',
    'nerf.hash_mlp_width', 'nerf.hash_levels', 'nerf.hash_start_levels', 'log.preview_every_steps',
    'log.preview_resolution', 'checkpoint.every_steps', 'export.num_frames',
    'export.resolution', 'export.mesh_resolution', 'export.texture_size',
}


def _flat_values(config, prefix=''):
  values = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      values.update(_flat_values(value, f'{prefix}{key}.'))
    else:
      values[f'{prefix}{key}'] = value
  return values


def test_toy_config_is_the_stable_diffusion_recipe():
  """One recipe: shading, background, regularisers and optimiser are SD's."""
  sd = _flat_values(_load(ROOT / 'configs' / 'dreamfusion_sd.py').get_config())
  toy = _flat_values(_load(ROOT / 'configs' / 'toy.py').get_config())
  differs = {k for k in sd if sd[k] != toy[k]}
  assert differs <= TOY_DIFFERS, sorted(differs - TOY_DIFFERS)
  # Scaled, not retuned: step counts by num_steps, regularisers by the scale.
  steps = toy['num_steps'] / sd['num_steps']
  for key in ('shading.albedo_steps', 'nerf.hash_level_start_step'):
    assert toy[key] == round(sd[key] * steps), key
  # Half the hash levels, all of them active at the same share of the run.
  assert toy['nerf.hash_levels'] * 2 == sd['nerf.hash_levels']
  assert toy['nerf.hash_start_levels'] * 2 == sd['nerf.hash_start_levels']

  def all_levels_at(c):
    added = c['nerf.hash_levels'] - c['nerf.hash_start_levels']
    return (c['nerf.hash_level_start_step'] +
            added * c['nerf.hash_level_every_steps']) / c['num_steps']

  assert all_levels_at(toy) == pytest.approx(all_levels_at(sd), abs=0.01)
  ratio = toy['guidance.scale'] / sd['guidance.scale']
  for key in ('loss.orientation_weight_start', 'loss.orientation_weight_end',
              'loss.opacity_weight'):
    assert toy[key] == pytest.approx(sd[key] * ratio), key
