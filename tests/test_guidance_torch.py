"""The Flax prior against diffusers' and transformers' PyTorch models.

Skipped when torch is absent (the project does not need it); about 15 s
where it is installed. With torch, the tiny safetensors model is loaded once
by the project's loader (converted to Flax without torch) and once by the
PyTorch classes, and the UNet's noise prediction, the VAE encoder's latents
and the text embeddings must agree. This is the one check of the VAE's
scaling, the map of renders to [-1, 1] and the UNet's timestep and layout
against the reference implementation rather than against the tests' own
Flax-to-PyTorch converter.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

# pylint: disable=g-import-not-at-top,g-bad-import-order
from configs import default
from dreamfusion_jax import guidance
from dreamfusion_jax import priors
import tiny_models  # tests/ is on sys.path under pytest.
import diffusers
import transformers
# pylint: enable=g-import-not-at-top,g-bad-import-order


# Largest difference allowed, as a fraction of the reference's largest
# absolute value. The text encoder and the VAE agree to about 1e-6 of their
# scale in float32 on a CPU. The UNets sum in other orders and differ by
# about 1e-4 of the output's scale (DESIGN.md section 8 gives 2e-4); a
# timestep off by one already moves the tiny UNet's output by 2.5e-2 of it.
_TOLERANCE = 1e-4
_UNET_TOLERANCE = 1e-3


def _close(flax_value, torch_value, tolerance=_TOLERANCE):
  flax_value = np.asarray(flax_value, np.float64)
  torch_value = np.asarray(torch_value, np.float64)
  scale = max(np.abs(torch_value).max(), 1e-6)
  np.testing.assert_allclose(flax_value, torch_value, atol=tolerance * scale)


def test_flax_prior_matches_pytorch(tmp_path):
  folder = tiny_models.make_tiny_stable_diffusion(
      tmp_path / 'sd', weights='safetensors')
  config = default.get_config()
  config.prompt = 'a red cube'
  config.guidance.model = str(folder)
  config.guidance.dtype = 'float32'
  prior = priors.load_prior(config)
  torch.manual_seed(0)

  # Text: the front-view prompt's embedding.
  tokenizer = transformers.CLIPTokenizer.from_pretrained(
      str(folder / 'tokenizer'))
  ids = tokenizer(['a red cube, front view'], padding='max_length',
                  max_length=tokenizer.model_max_length,
                  return_tensors='pt').input_ids
  text = transformers.CLIPTextModel.from_pretrained(
      str(folder / 'text_encoder')).eval()
  with torch.no_grad():
    hidden = text(ids).last_hidden_state.numpy()
  _close(prior.view_embeddings[0], hidden[0])

  # UNet: eps(z_t; y, t) for two steps.
  unet = diffusers.UNet2DConditionModel.from_pretrained(
      str(folder / 'unet')).eval()
  rng = np.random.default_rng(0)
  z_t = rng.normal(size=(2, 16, 16, 4)).astype(np.float32)
  t = np.array([20, 900], np.int32)
  embedding = np.asarray(prior.view_embeddings[:2])
  eps = jax.jit(prior.predict_noise)(prior.params, jnp.asarray(z_t),
                                     jnp.asarray(t), jnp.asarray(embedding))
  with torch.no_grad():
    eps_torch = unet(torch.from_numpy(z_t.transpose(0, 3, 1, 2)),
                     torch.from_numpy(t.astype(np.int64)),
                     encoder_hidden_states=torch.tensor(embedding)).sample
  _close(eps, eps_torch.numpy().transpose(0, 2, 3, 1), _UNET_TOLERANCE)

  # VAE encoder: the scaled posterior mean of a 32x32 render.
  vae = diffusers.AutoencoderKL.from_pretrained(str(folder / 'vae')).eval()
  images = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
  latents = jax.jit(prior.encode)(prior.params, jnp.asarray(images))
  with torch.no_grad():
    posterior = vae.encode(
        torch.from_numpy(2 * images.transpose(0, 3, 1, 2) - 1)).latent_dist
  _close(latents, posterior.mean.numpy().transpose(0, 2, 3, 1)
         * vae.config.scaling_factor)
