"""The Stable Diffusion recipe's options: start, sparsity, orientation,
background, coarse-to-fine hash grid, precision and the VAE's input size."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import dreamfusion_sd
from configs import toy as configs_toy
from dreamfusion_jax import cameras
from dreamfusion_jax import errors
from dreamfusion_jax import losses
from dreamfusion_jax import render
from dreamfusion_jax import runs
from dreamfusion_jax import schedules
from dreamfusion_jax import train
from dreamfusion_jax import train_step
from dreamfusion_jax.guidance import prior as prior_lib
from dreamfusion_jax.guidance import stable_diffusion
from dreamfusion_jax.guidance import weight_files
from dreamfusion_jax.nerf import field
import tiny_models  # tests/ is on sys.path under pytest.


def _preview_opacity(config, seed):
  """Mean opacity of the step-0 field over the preview orbit (32x32)."""
  model = field.make_model(config)
  params = field.init_params(jax.random.key(seed), model)
  c = config.camera
  cams = cameras.orbit_cameras(4, c.eval_elevation, c.eval_distance,
                               c.eval_focal)
  out = render.render_cameras(model, params, cams, 32, config.render)
  return float(np.mean(out['opacity'])), out['opacity']


def test_stable_diffusion_run_starts_from_empty_space():
  config = dreamfusion_sd.get_config()
  for seed in (0, 1):
    mean, opacity = _preview_opacity(config, seed)
    assert mean <= 0.3, mean
    # Empty corners, an opaque ball in the middle.
    assert float(np.max(opacity[:, :4, :4])) < 0.01
    assert float(np.max(opacity[:, 14:18, 14:18])) > 0.9
  # The paper's exp activation and Gaussian blob: a fog over the whole view.
  paper = dreamfusion_sd.get_config()
  paper.nerf.density_activation = 'exp'
  paper.nerf.blob = 'paper'
  paper.nerf.blob_density, paper.nerf.blob_radius = 5.0, 0.2
  mean, opacity = _preview_opacity(paper, 0)
  assert mean > 0.8 and float(np.min(opacity)) > 0.5, mean


def test_density_activation_and_blobs():
  config = default.get_config()
  config.nerf.mlp_blocks, config.nerf.mlp_width = 1, 8
  x = jnp.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.6, 0.8],
                 [0.1, -0.2, 0.3]])
  r = np.linalg.norm(np.asarray(x), axis=-1)
  for kind, activation, blob in (
      ('paper', 'exp', 5.0 * np.exp(-r**2 / (2 * 0.2**2))),
      ('magic3d', 'softplus', 10.0 * (1.0 - r / 0.5))):
    config.nerf.blob, config.nerf.density_activation = kind, activation
    config.nerf.blob_density = 5.0 if kind == 'paper' else 10.0
    config.nerf.blob_radius = 0.2 if kind == 'paper' else 0.5
    model = field.make_model(config)
    params = field.init_params(jax.random.key(0), model)
    raw, _ = model.apply(params, x, method=model.raw_density_and_albedo)
    trunk_raw = model.apply(params, x,
                            method=lambda m, p: m.trunk(p)[..., 0])
    np.testing.assert_allclose(raw - trunk_raw, blob, rtol=1e-5, atol=1e-5)
    density, _ = model.apply(params, x, method=model.density_and_albedo)
    want = np.exp(raw) if activation == 'exp' else np.log1p(np.exp(raw))
    np.testing.assert_allclose(density, want, rtol=1e-5)
  # Magic3D's blob is 0 on the sphere of radius s and negative outside.
  assert blob[1] == pytest.approx(0.0) and blob[2] == pytest.approx(-10.0)


def _hash_config():
  config = dreamfusion_sd.get_config()
  config.nerf.hash_levels = 6
  config.nerf.hash_log2_table_size = 6
  config.nerf.hash_max_resolution = 64
  config.nerf.hash_mlp_width = 8
  config.nerf.background_width = 8
  config.nerf.hash_start_levels = 2
  config.nerf.hash_level_start_step = 100
  config.nerf.hash_level_every_steps = 50
  return config


def test_hash_levels_are_added_coarse_to_fine():
  c = _hash_config().nerf
  got = [int(field.active_levels(s, c)) for s in (0, 99, 100, 149, 150, 250,
                                                   10**6)]
  assert got == [2, 2, 3, 3, 4, 6, 6]
  sd = dreamfusion_sd.get_config().nerf  # threestudio: 8, +1 per 500 from 2000.
  assert [int(field.active_levels(s, sd)) for s in (1999, 2000, 5500)] == [
      8, 9, 16]
  c.hash_start_levels = 0
  assert int(field.active_levels(0, c)) == c.hash_levels


def test_inactive_hash_levels_give_nothing_and_learn_nothing():
  config = _hash_config()
  model = field.make_model(config)
  params = field.init_params(jax.random.key(0), model)
  points = jax.random.uniform(jax.random.key(1), (64, 3), minval=-1.0,
                              maxval=1.0)

  def raw_sum(p, step):
    active = field.active_params(p, step, config)
    return jnp.sum(model.apply(active, points,
                               method=model.raw_density_and_albedo)[0])

  grads = jax.grad(raw_sum)(params, 0)
  table_grad = np.asarray(grads['params']['trunk']['hash']['tables'])
  assert np.all(table_grad[2:] == 0)  # Levels 2.. are not active at step 0.
  assert np.all(np.abs(table_grad[:2]).sum(axis=(1, 2)) > 0)
  # Every level contributes once all are active; the MLP field is untouched.
  grads = jax.grad(raw_sum)(params, 10**6)
  table_grad = np.asarray(grads['params']['trunk']['hash']['tables'])
  assert np.all(np.abs(table_grad).sum(axis=(1, 2)) > 0)
  mlp = default.get_config()
  assert field.active_params(params, 0, mlp) is params


def test_orientation_normalised_by_the_rays_that_see_the_object():
  key = jax.random.key(0)
  weights = jax.random.uniform(key, (2, 5, 8)) * 0.1
  weights = weights.at[:, 3:].set(0.0)  # Rays 3, 4 of each view see nothing.
  normals = jax.random.normal(jax.random.key(1), (2, 5, 8, 3))
  normals /= jnp.linalg.norm(normals, axis=-1, keepdims=True)
  dirs = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0]), (2, 5, 3))
  per_ray = jnp.sum(weights * jnp.maximum(jnp.sum(normals * dirs[:, :, None],
                                                  -1), 0.0)**2, -1)
  mean = losses.orientation(weights, normals, dirs, 'rays')
  opaque = losses.orientation(weights, normals, dirs, 'opaque')
  np.testing.assert_allclose(mean, jnp.sum(per_ray) / 10, rtol=1e-6)
  np.testing.assert_allclose(opaque, jnp.sum(per_ray) / 6, rtol=1e-6)
  # Empty rays do not dilute it: adding them changes nothing.
  wider = losses.orientation(jnp.concatenate([weights, 0 * weights], 1),
                             jnp.concatenate([normals, normals], 1),
                             jnp.concatenate([dirs, dirs], 1), 'opaque')
  np.testing.assert_allclose(wider, opaque, rtol=1e-6)


def test_linear_orientation_ramp():
  config = dreamfusion_sd.get_config()
  n = config.num_steps
  w = [float(schedules.orientation_weight(s, config.loss, n))
       for s in (0, 1250, 2500, 5000, 9999)]
  np.testing.assert_allclose(w, [10.0, 257.5, 505.0, 1000.0, 1000.0],
                             rtol=1e-5)


def test_background_learns_at_its_own_rate():
  config = _hash_config()
  config.optim.background_lr_multiplier = 0.1
  params = field.init_params(jax.random.key(0), field.make_model(config))
  tx = train_step.make_optimizer(config)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  lr = config.optim.learning_rate
  seen = set()
  for (path, u) in jax.tree_util.tree_flatten_with_path(updates)[0]:
    keys = [getattr(k, 'key', None) for k in path]
    rate = 0.1 if 'background_model' in keys else 1.0
    seen.add(rate)
    # Adam's first step from zero moments is -lr sign(g).
    np.testing.assert_allclose(u, -rate * lr, rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))
  assert seen == {0.1, 1.0}


def test_precision():
  assert stable_diffusion.resolve_dtype('auto', 'gpu') == jnp.float16
  assert stable_diffusion.resolve_dtype('auto', 'tpu') == jnp.bfloat16
  assert stable_diffusion.resolve_dtype('auto', 'cpu') == jnp.float32
  assert stable_diffusion.resolve_dtype('float16', 'gpu') == jnp.float16
  with pytest.raises(errors.UserError, match="'float16' needs a GPU"):
    stable_diffusion.resolve_dtype('float16', 'cpu')
  config = dreamfusion_sd.get_config()
  config.guidance.dtype = 'float16'
  with pytest.raises(errors.UserError, match='guidance.dtype'):
    train.validate_config(config)  # This machine is a CPU.
  assert 'float16' in prior_lib.DTYPES


@pytest.mark.parametrize('field_name, value, words', [
    ('nerf.density_activation', 'relu', 'nerf.density_activation'),
    ('nerf.blob', 'gaussian', 'nerf.blob'),
    ('nerf.hash_start_levels', 17, 'nerf.hash_start_levels'),
    ('nerf.hash_level_every_steps', 0, 'nerf.hash_level_every_steps'),
    ('loss.opacity_weight', -1.0, 'loss.opacity_weight'),
    ('loss.orientation_weight_end', -5.0, 'loss.orientation_weight_end'),
    ('loss.orientation_normalize', 'pixels', 'loss.orientation_normalize'),
    ('loss.orientation_ramp_shape', 'cubic', 'loss.orientation_ramp_shape'),
    ('optim.background_lr_multiplier', -0.1,
     'optim.background_lr_multiplier'),
])
def test_bad_recipe_values_are_one_sentence(field_name, value, words):
  config = dreamfusion_sd.get_config()
  group, name = field_name.split('.')
  config[group][name] = value
  with pytest.raises(errors.UserError) as info:
    train.validate_config(config)
  message = str(info.value)
  assert words in message and '\n' not in message


def test_vae_input_size_comes_from_the_unet(tmp_path):
  """The VAE config's sample_size is not the size the UNet's latents need."""
  folder = tiny_models.make_tiny_stable_diffusion(tmp_path / 'sd')
  vae_config = folder / 'vae' / 'config.json'
  values = json.loads(vae_config.read_text())
  values['sample_size'] = 48  # Trained at another size; the rule must hold.
  vae_config.write_text(json.dumps(values))
  prior = stable_diffusion.load(str(folder), ['a cube'] * 4, dtype='float32')
  latent = tiny_models.unet_config()['sample_size']
  images = jnp.full((1, 20, 20, 3), 0.5)
  x = prior.encode(prior.params, images)
  assert x.shape[1:3] == (latent, latent)


def test_half_precision_variants_are_fetched_and_loaded(tmp_path):
  """A folder with only float16 variants loads, close to the full weights."""
  full = tiny_models.make_tiny_stable_diffusion(tmp_path / 'full',
                                                weights='safetensors')
  half = tiny_models.make_tiny_stable_diffusion(tmp_path / 'half',
                                                weights='safetensors')
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  for name in ('unet/diffusion_pytorch_model', 'vae/diffusion_pytorch_model',
               'text_encoder/model'):
    path = half / f'{name}.safetensors'
    state = safetensors.numpy.load_file(str(path))
    safetensors.numpy.save_file(
        {k: v.astype(np.float16) for k, v in state.items()},
        str(half / f'{name}.fp16.safetensors'))
    path.unlink()
  assert weight_files.weight_file(half / 'unet', 'diffusers').name == (
      'diffusion_pytorch_model.fp16.safetensors')
  assert weight_files.fetch(str(half), half=True) == half
  a = stable_diffusion.load(str(full), ['a cube'] * 4, dtype='float32')
  b = stable_diffusion.load(str(half), ['a cube'] * 4, dtype='float32')
  z = jax.random.normal(jax.random.key(0), (1, 16, 16, 4))
  t = jnp.array([500])
  emb = a.view_embeddings[:1]
  np.testing.assert_allclose(b.predict_noise(b.params, z, t, emb),
                             a.predict_noise(a.params, z, t, emb),
                             atol=2e-2)


def test_half_patterns_name_the_repositories_variant_files():
  names = {pathlib.PurePath(p).name for p in weight_files.HALF_PATTERNS}
  assert names == {'diffusion_pytorch_model.fp16.safetensors',
                   'model.fp16.safetensors'}


def test_configs_written_before_the_recipe_options_still_load(tmp_path):
  config = default.get_config().to_dict()
  for group, names in (('nerf', ('density_activation', 'blob',
                                 'hash_start_levels')),
                       ('loss', ('orientation_normalize',
                                 'orientation_ramp_shape')),
                       ('optim', ('background_lr_multiplier',))):
    for name in names:
      del config[group][name]
  (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(config))
  loaded = runs.load_config(str(tmp_path))
  assert loaded.nerf.density_activation == 'exp'
  assert loaded.nerf.blob == 'paper'
  assert loaded.nerf.hash_start_levels == 0
  assert loaded.loss.orientation_normalize == 'rays'
  assert loaded.optim.background_lr_multiplier == 1.0


def test_configs_written_before_random_backgrounds_still_load(tmp_path):
  config = configs_toy.get_config().to_dict()
  del config['shading']['random_background_prob']
  del config['shading']['random_background_colors']
  del config['toy']['background_colors']
  config['toy']['background_color'] = [0.5, 0.5, 0.5]
  (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(config))
  loaded = runs.load_config(str(tmp_path))
  assert loaded.shading.random_background_prob == 0.0
  assert not loaded.shading.random_background_colors
  assert [list(c) for c in loaded.toy.background_colors] == [[0.5, 0.5, 0.5]]
  assert 'background_color' not in loaded.toy
