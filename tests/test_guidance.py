"""Loading a (tiny, random) Stable Diffusion and running SDS on it.

The models are built by tests/tiny_models.py and put into a temporary
Hugging Face cache, so they load through the same path a hub id takes, in
offline mode: no downloads.
"""

import functools
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from dreamfusion_jax import errors
from dreamfusion_jax import guidance
from dreamfusion_jax import priors
from dreamfusion_jax.guidance import hub
from dreamfusion_jax.guidance import prior as prior_lib
from dreamfusion_jax.guidance import quiet
from dreamfusion_jax.guidance import sds
from dreamfusion_jax.guidance import stable_diffusion
from dreamfusion_jax.guidance import views
import tiny_models  # tests/ is on sys.path under pytest.
# After tiny_models, which silences the Flax deprecation notices.
import diffusers  # pylint: disable=g-bad-import-order

ROOT = pathlib.Path(__file__).resolve().parent.parent

_jit = functools.partial(jax.jit, compiler_options=tiny_models.FAST_COMPILE)
_COMMIT = '0123456789abcdef0123456789abcdef01234567'


def _put_in_cache(cache: pathlib.Path, repo_id: str, folder: pathlib.Path):
  """Lays `folder` out as huggingface_hub's cache holds a downloaded repo."""
  repo = cache / ('models--' + repo_id.replace('/', '--'))
  shutil.copytree(folder, repo / 'snapshots' / _COMMIT)
  (repo / 'refs').mkdir(parents=True)
  (repo / 'refs' / 'main').write_text(_COMMIT)


def _config(model, **guidance_fields):
  config = default.get_config()
  config.prompt = 'a red cube'
  config.guidance.model = model
  for name, value in guidance_fields.items():
    config.guidance[name] = value
  return config


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  """Three tiny models (Flax, safetensors, pixel-space) and a hub cache."""
  root = tmp_path_factory.mktemp('models')
  folders = {
      'flax': tiny_models.make_tiny_stable_diffusion(root / 'flax'),
      'safetensors': tiny_models.make_tiny_stable_diffusion(
          root / 'safetensors', weights='safetensors'),
      'pixel': tiny_models.make_tiny_stable_diffusion(
          root / 'pixel', weights='safetensors', pixel_space=True),
  }
  cache = root / 'hf_cache'
  for name in ('flax', 'safetensors'):
    _put_in_cache(cache, f'tiny-org/sd-{name}', folders[name])
  return folders, cache


@pytest.fixture(scope='module')
def loaded_priors(models):
  """Priors loaded by hub id (offline, from the cache) and from a folder."""
  folders, cache = models
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('HF_HUB_OFFLINE', '1')
    patch.setenv('HF_HUB_CACHE', str(cache))
    loaded = {name: priors.load_prior(_config(f'tiny-org/sd-{name}'))
              for name in ('flax', 'safetensors')}
  loaded['pixel'] = priors.load_prior(_config(str(folders['pixel'])))
  return loaded


def _assert_trees_equal(a, b):
  flat_a, tree_a = jax.tree.flatten(a)
  flat_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y)


def test_prior_contents(loaded_priors):
  prior = loaded_priors['flax']
  width = tiny_models.TEXT_WIDTH
  assert prior.view_embeddings.shape == (4, tiny_models.TEXT_LENGTH, width)
  assert prior.uncond_embedding.shape == (tiny_models.TEXT_LENGTH, width)
  # View prompts differ from each other and from the empty prompt.
  for i in range(4):
    assert not np.allclose(prior.view_embeddings[i], prior.uncond_embedding)
    for j in range(i):
      assert not np.allclose(prior.view_embeddings[i],
                             prior.view_embeddings[j])
  # SD's scaled-linear schedule.
  abar = prior.alphas_cumprod
  assert abar.shape == (1000,)
  np.testing.assert_allclose(abar[0], 1 - 0.00085, rtol=1e-6)
  np.testing.assert_allclose(abar[-1], 0.0047, rtol=0.02)
  # Frozen data only: the UNet, the VAE's encoder, the schedule.
  assert set(prior.params) == {'unet', 'vae', 'alphas_cumprod'}
  assert set(prior.params['vae']) == {'encoder', 'quant_conv'}
  assert set(loaded_priors['pixel'].params) == {'unet', 'alphas_cumprod'}
  for leaf in jax.tree.leaves(prior.params):
    assert leaf.dtype == jnp.float32  # 'auto' on a CPU.


def test_view_prompts():
  assert guidance.view_prompts('a cat') == [
      'a cat, front view', 'a cat, side view', 'a cat, back view',
      'a cat, overhead view']
  assert guidance.view_prompts('a cat', enabled=False) == ['a cat'] * 4


def test_negative_prompt_and_local_folder(models, loaded_priors):
  folders, _ = models
  # A local folder loads like the hub id; the negative prompt replaces the
  # empty one; without view prompts every view gets the bare prompt.
  config = _config(str(folders['flax']), view_prompts=False)
  config.negative_prompt = 'blurry'
  prior = priors.load_prior(config)
  _assert_trees_equal(prior.params, loaded_priors['flax'].params)
  bare, blurry = stable_diffusion.encode_prompts(
      folders['flax'], ['a red cube', 'blurry'])
  for view in range(4):
    np.testing.assert_allclose(prior.view_embeddings[view], bare, atol=1e-6)
  np.testing.assert_allclose(prior.uncond_embedding, blurry, atol=1e-6)


@pytest.fixture(scope='module')
def sds_step():
  """SDS gradients and the reference w(t)(eps_hat - eps), one compile."""

  @_jit
  def step(prior, images, azimuth, elevation, key):
    scale, t_min, t_max = 100.0, 0.02, 0.98

    def total(prior, images):
      loss, aux = sds.sds_loss(
          prior, images, azimuth, elevation, key, scale=scale, t_min=t_min,
          t_max=t_max, weighting='sigma2')
      return jnp.sum(loss), aux

    (grad_prior, grad_images), aux = jax.grad(
        total, argnums=(0, 1), has_aux=True)(prior, images)
    # The reference: SDS written out. One batched UNet call as in sds_loss
    # (XLA then compiles the UNet once); tests/test_sds.py checks that it
    # equals separate conditional and unconditional calls.
    key_t, key_eps = jax.random.split(key)
    x, encode_vjp = jax.vjp(lambda im: prior.encode(prior.params, im),
                            images)
    t = sds.sample_timesteps(key_t, x.shape[0], 1000, t_min, t_max)
    abar = prior.alphas_cumprod[t][:, None, None, None]
    eps = jax.random.normal(key_eps, x.shape)
    z_t = jnp.sqrt(abar) * x + jnp.sqrt(1 - abar) * eps
    cond = prior.view_embeddings[prior_lib.view_index(azimuth, elevation)]
    uncond = jnp.broadcast_to(prior.uncond_embedding, cond.shape)
    eps_c, eps_u = jnp.split(prior.predict_noise(
        prior.params, jnp.concatenate([z_t, z_t]), jnp.concatenate([t, t]),
        jnp.concatenate([cond, uncond])), 2)
    target = (1 - abar) * (eps_u + scale * (eps_c - eps_u) - eps)
    return {'grad_images': grad_images, 'grad_prior': grad_prior, 'aux': aux,
            'x': x, 'eps_c': eps_c, 'target': target,
            'target_vjp': encode_vjp(target)[0]}

  return step


def _cameras():
  return (jnp.array([0.0, 180.0]), jnp.array([10.0, 70.0]),
          jax.random.key(3))


def test_flax_and_safetensors_forms_agree(loaded_priors):
  # The safetensors form holds the same numbers under PyTorch's names and
  # layouts: the loader's renaming and transposing must recover them all.
  flax_prior, st_prior = loaded_priors['flax'], loaded_priors['safetensors']
  _assert_trees_equal(flax_prior.params, st_prior.params)
  np.testing.assert_array_equal(flax_prior.view_embeddings,
                                st_prior.view_embeddings)
  np.testing.assert_array_equal(flax_prior.uncond_embedding,
                                st_prior.uncond_embedding)


def test_view_embeddings_are_the_view_prompts_in_views_order(models,
                                                             loaded_priors):
  folders, _ = models
  assert prior_lib.VIEWS == ('front', 'side', 'back', 'overhead')
  want = stable_diffusion.encode_prompts(folders['flax'], [
      'a red cube, front view', 'a red cube, side view',
      'a red cube, back view', 'a red cube, overhead view', ''])
  prior = loaded_priors['flax']
  np.testing.assert_allclose(prior.view_embeddings, want[:4], atol=1e-6)
  np.testing.assert_allclose(prior.uncond_embedding, want[4], atol=1e-6)


def test_negative_view_embeddings_and_perp_neg(models, loaded_priors):
  folders, _ = models
  prior = loaded_priors['flax']
  want = stable_diffusion.encode_prompts(
      folders['flax'], guidance.negative_view_prompts('a red cube', ''))
  np.testing.assert_allclose(prior.negative_view_embeddings, want, atol=1e-6)

  @_jit
  def grads(prior, images, azimuth, elevation, key):
    def run(**fix):
      return jax.grad(lambda im: jnp.sum(sds.sds_loss(
          prior, im, azimuth, elevation, key, scale=100.0, t_min=0.02,
          t_max=0.98, weighting='sigma2', **fix)[0]))(images)
    return (run(), run(perp_neg=((0.0, 0.0, 0.0),) * 4),
            run(perp_neg=views.PERP_NEG_DEFAULTS),
            run(negative_view_prompts=True))

  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  plain, zero, perp, negative = grads(prior, images, *_cameras())
  # At azimuth 0 and overhead the interpolated embedding is the nearest
  # one: Perp-Neg without negatives is the paper's guidance.
  np.testing.assert_allclose(zero, plain, rtol=1e-4, atol=1e-6)
  assert np.all(np.isfinite(perp))
  # The front camera has a side negative of weight -1.57; overhead none.
  assert not np.allclose(perp[0], plain[0], rtol=1e-3)
  np.testing.assert_allclose(perp[1], plain[1], rtol=1e-4, atol=1e-6)
  # Negative view prompts: the front against '..., back view'; overhead
  # keeps the empty prompt.
  assert not np.allclose(negative[0], plain[0], rtol=1e-3)
  np.testing.assert_allclose(negative[1], plain[1], rtol=1e-4, atol=1e-6)


def test_encode_and_predict_noise_call_the_networks_as_diffusers_does(
    models, loaded_priors):
  """The prior's wrapping of the VAE and the UNet, against diffusers' own.

  encode: [0, 1] -> [-1, 1], NHWC -> NCHW, the posterior mean times the
  scaling factor of vae/config.json. predict_noise: NCHW, the integer
  timestep, the embedding as encoder hidden states. (The networks
  themselves are checked against PyTorch in test_guidance_torch.py.)
  """
  folders, _ = models
  prior = loaded_priors['flax']
  size, latent = tiny_models.tiny_shapes()
  vae, vae_params = stable_diffusion.load_vae(folders['flax'])
  unet, unet_params = stable_diffusion.load_unet(folders['flax'])
  scaling = json.loads(
      (folders['flax'] / 'vae' / 'config.json').read_text())['scaling_factor']
  assert scaling == tiny_models.vae_config()['scaling_factor'] != 1.0

  @_jit
  def run(prior, vae_params, unet_params, images, z_t, t, embedding):
    def vae_mean(x):  # diffusers' Flax VAE takes NCHW, gives NHWC latents.
      return vae.apply({'params': vae_params}, jnp.transpose(x, (0, 3, 1, 2)),
                       method=vae.encode).latent_dist.mean
    eps = unet.apply({'params': unet_params}, jnp.transpose(z_t, (0, 3, 1, 2)),
                     t, embedding).sample
    return {'x': prior.encode(prior.params, images),
            'mean': vae_mean(2.0 * images - 1.0),
            'mean_unmapped': vae_mean(images),
            'eps': prior.predict_noise(prior.params, z_t, t, embedding),
            'eps_nchw': eps}

  key_images, key_z = jax.random.split(jax.random.key(4))
  images = jax.random.uniform(key_images, (2, size, size, 3))
  z_t = jax.random.normal(key_z, (2, latent, latent, 4))
  t = jnp.array([20, 900], jnp.int32)
  out = run(prior, vae_params, unet_params, images, z_t, t,
            prior.view_embeddings[:2])
  assert out['x'].shape == (2, latent, latent, 4)
  np.testing.assert_allclose(out['x'], scaling * out['mean'], rtol=1e-5,
                             atol=1e-6)
  # Without the map to [-1, 1] the latents would differ.
  assert np.abs(out['mean'] - out['mean_unmapped']).max() > 0.1 * np.abs(
      out['mean']).max()
  np.testing.assert_allclose(out['eps'],
                             jnp.transpose(out['eps_nchw'], (0, 2, 3, 1)),
                             rtol=1e-5, atol=1e-6)
  assert np.abs(out['eps']).max() > 0


def test_latents_scale_with_the_configured_scaling_factor(models,
                                                          loaded_priors):
  # The factor is read from the VAE's config, not assumed to be SD v1's.
  folders, _ = models
  prior = loaded_priors['flax']
  vae, vae_params = stable_diffusion.load_vae(folders['flax'])
  unet, unet_params = stable_diffusion.load_unet(folders['flax'])
  unit = stable_diffusion.make_prior(
      unet, unet_params,
      diffusers.FlaxAutoencoderKL(**{**tiny_models.vae_config(),
                                     'scaling_factor': 1.0}),
      vae_params, prior.view_embeddings, prior.uncond_embedding,
      prior.alphas_cumprod)
  size, _ = tiny_models.tiny_shapes()
  images = jax.random.uniform(jax.random.key(5), (2, size, size, 3))
  x, x_unit = (_jit(p.encode)(p.params, images) for p in (prior, unit))
  np.testing.assert_allclose(
      x, tiny_models.vae_config()['scaling_factor'] * x_unit, rtol=1e-5,
      atol=1e-6)


def test_latent_sds_gradient_is_encoder_vjp(loaded_priors, sds_step):
  prior = loaded_priors['flax']
  images = jax.random.uniform(jax.random.key(1), (2, 24, 24, 3))
  out = sds_step(prior, images, *_cameras())
  scale = np.abs(out['target_vjp']).max()
  assert scale > 0
  np.testing.assert_allclose(out['grad_images'], out['target_vjp'],
                             atol=1e-4 * scale)
  for leaf in jax.tree.leaves(out['grad_prior']):
    np.testing.assert_array_equal(leaf, 0.0)


def test_pixel_sds_gradient(loaded_priors, sds_step):
  prior = loaded_priors['pixel']
  # At the UNet's size there is no resize: x = 2 images - 1.
  images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  out = sds_step(prior, images, *_cameras())
  scale = np.abs(out['target']).max()
  np.testing.assert_allclose(out['grad_images'], 2 * out['target'],
                             atol=1e-4 * scale)
  np.testing.assert_allclose(
      out['aux']['residual_norm'],
      np.sqrt(np.sum((out['target'] / (1 - prior.alphas_cumprod[
          out['aux']['t']])[:, None, None, None])**2, axis=(1, 2, 3))),
      rtol=1e-4)


def test_bfloat16(models):
  folders, _ = models
  assert stable_diffusion.resolve_dtype('auto') == jnp.float32  # CPU.
  _, params = stable_diffusion.load_unet(folders['safetensors'], jnp.bfloat16)
  dtypes = {leaf.dtype for leaf in jax.tree.leaves(params)}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}
  with pytest.raises(errors.UserError, match='guidance.dtype'):
    stable_diffusion.resolve_dtype('float16')


def test_missing_hub_model_is_one_sentence(tmp_path, monkeypatch):
  cache = tmp_path / 'empty_cache'
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setenv('HF_HUB_CACHE', str(cache))
  with pytest.raises(errors.UserError) as info:
    priors.load_prior(_config('nobody/no-such-model'))
  message = str(info.value)
  assert 'nobody/no-such-model' in message
  assert str(cache) in message
  assert 'huggingface-cli download nobody/no-such-model' in message
  assert 'guidance.model' in message
  assert '\n' not in message
  # No chained traceback from inside huggingface_hub.
  assert info.value.__cause__ is None and info.value.__suppress_context__


def test_missing_folder_and_bad_layout(tmp_path):
  with pytest.raises(errors.UserError, match='does not exist'):
    hub.resolve(tmp_path / 'nowhere')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(errors.UserError, match='diffusers layout'):
    priors.load_prior(_config(str(tmp_path / 'empty')))


def test_weights_that_do_not_fit_the_config(models, tmp_path):
  folders, _ = models
  folder = tmp_path / 'mixed'
  shutil.copytree(folders['safetensors'], folder)
  config_path = folder / 'unet' / 'config.json'
  unet_config = json.loads(config_path.read_text())
  unet_config['block_out_channels'] = [32, 96]
  config_path.write_text(json.dumps(unet_config))
  with pytest.raises(errors.UserError, match='do not fit'):
    stable_diffusion.load_unet(folder)


def test_pickle_refused_unless_allowed(models, tmp_path):
  folders, _ = models
  folder = tmp_path / 'pickled'
  shutil.copytree(folders['safetensors'], folder)
  unet = folder / 'unet'
  (unet / 'diffusion_pytorch_model.safetensors').rename(
      unet / 'diffusion_pytorch_model.bin')
  with pytest.raises(errors.UserError, match='allow_pickle') as info:
    priors.load_prior(_config(str(folder)))
  assert 'diffusion_pytorch_model.bin' in str(info.value)
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    with pytest.raises(errors.UserError, match='need torch'):
      priors.load_prior(_config(str(folder), allow_pickle=True))


def test_only_flax_deprecation_notices_are_silenced():
  def passes(message):
    record = logging.LogRecord('diffusers.models', logging.WARNING, __file__,
                               0, message, None, None)
    return quiet._FILTER.filter(record)  # pylint: disable=protected-access

  assert not passes('Flax classes are deprecated and will be removed in '
                    'Diffusers v0.40.0. We recommend migrating ...')
  assert not passes('TensorFlow and JAX classes are deprecated and will be '
                    'removed in Transformers v5. We recommend ...')
  assert passes('Some weights of the model checkpoint were not used.')


def test_the_libraries_own_log_output_drops_only_the_notices():
  # In a fresh process, since pytest adds capture handlers of its own to
  # loggers that do not propagate, as the libraries' are.
  script = (
      'from dreamfusion_jax.guidance import quiet\n'
      'from diffusers.utils import logging as d\n'
      'from transformers.utils import logging as t\n'
      "d.get_logger('diffusers.models').warning("
      "'Flax classes are deprecated and will be removed')\n"
      "t.get_logger('transformers.modeling_flax_utils').warning("
      "'TensorFlow and JAX classes are deprecated and will be removed')\n"
      "d.get_logger('diffusers.models').warning('diffusers kept')\n"
      "t.get_logger('transformers.modeling_flax_utils').warning("
      "'transformers kept')\n")
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=str(ROOT)),
                        capture_output=True, text=True, timeout=120,
                        check=True)
  assert 'diffusers kept' in proc.stderr
  assert 'transformers kept' in proc.stderr
  assert 'deprecated' not in proc.stderr, proc.stderr
