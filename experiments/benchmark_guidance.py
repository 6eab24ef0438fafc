r"""Cost of the guidance side of one DreamFusion step.

For a tiny random Stable Diffusion (the tests' sizes) and for the full
Stable Diffusion v1.5 shape (random weights from its configs), prints:

  - parameter counts and memory (from jax.eval_shape, nothing allocated);
  - the UNet forward at the classifier-free-guidance batch (2B);
  - the VAE encoder forward + backward (the render's gradient path);
  - sds_loss value_and_grad with respect to the renders, and its overhead
    over the UNet forward (noise, encoder, CFG, surrogate);
  - the same step with Perp-Neg (4 UNet passes per view instead of 2), timed
    alternately with the plain one;
  - compile time of each.

The full model is only sized by default: one forward of its UNet takes about
a minute on a 2-core CPU. On an accelerator add --time_full.

  python experiments/benchmark_guidance.py
  python experiments/benchmark_guidance.py --time_full --batch=4
"""

import os
import statistics
import sys

# Run from a checkout without installing: the package is at the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import time  # pylint: disable=g-import-not-at-top,g-bad-import-order

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from dreamfusion_jax.guidance import sds
from dreamfusion_jax.guidance import stable_diffusion
from dreamfusion_jax.guidance import views
import diffusers  # pylint: disable=g-bad-import-order  (after guidance)

_BATCH = flags.DEFINE_integer('batch', 1, 'Views B per step (UNet sees 2B).')
_RENDER = flags.DEFINE_integer('render', 64, 'Render resolution.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs (median shown).')
_DTYPE = flags.DEFINE_string('dtype', 'auto', 'auto, float32 or bfloat16.')
_TIME_FULL = flags.DEFINE_bool(
    'time_full', False, 'Also time the full SD v1.5 shape (accelerators).')
_MODELS = flags.DEFINE_list('models', ['tiny', 'sd15'], 'tiny and/or sd15.')

# Stable Diffusion v1.5's unet/ and vae/ configs (the Flax fields).
SD15 = {
    'unet': dict(
        sample_size=64, in_channels=4, out_channels=4,
        down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',),
        up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        attention_head_dim=8, cross_attention_dim=768),
    'vae': dict(
        sample_size=512, in_channels=3, out_channels=3,
        down_block_types=('DownEncoderBlock2D',) * 4,
        up_block_types=('UpDecoderBlock2D',) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=4, scaling_factor=0.18215),
    'text': (77, 768),
}
# The sizes of tests/tiny_models.py.
TINY = {
    'unet': dict(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
        up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'),
        block_out_channels=(32, 64), layers_per_block=1,
        attention_head_dim=4, cross_attention_dim=32),
    'vae': dict(
        sample_size=32, in_channels=3, out_channels=3,
        down_block_types=('DownEncoderBlock2D',) * 2,
        up_block_types=('UpDecoderBlock2D',) * 2,
        block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=4, scaling_factor=0.18215),
    'text': (77, 32),
}
SCHEDULE = {'beta_start': 0.00085, 'beta_end': 0.012,
            'beta_schedule': 'scaled_linear', 'num_train_timesteps': 1000}


def _random(shapes, seed):
  """Random weights for a shape tree, with numpy (instant next to an init)."""
  rng = np.random.default_rng(seed)

  def draw(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    return (rng.standard_normal(leaf.shape, np.float32)
            / np.float32(np.sqrt(fan_in)))

  return jax.tree.map(draw, shapes)


def _timed(name, fn, *args):
  """Compiles fn(*args), runs it; prints and returns (compile s, run s)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))  # Warm-up.
  runs = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - start)
  run_s = statistics.median(runs)
  print(f'  {name:<34} compile {compile_s:7.2f} s   run {run_s * 1e3:9.2f} ms')
  return compile_s, run_s


def num_params(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _sizes(name, unet, vae, dtype):
  unet_shapes = jax.eval_shape(unet.init_weights, jax.random.PRNGKey(0))
  vae_shapes = jax.eval_shape(vae.init_weights, jax.random.PRNGKey(0))
  encoder = {k: vae_shapes[k] for k in ('encoder', 'quant_conv')}
  size = jnp.dtype(dtype).itemsize
  print(f'{name}: compute dtype {jnp.dtype(dtype).name}, '
        f'devices {jax.devices()}')
  for part, shapes in (('UNet', unet_shapes), ('VAE (all)', vae_shapes),
                       ('VAE encoder (kept)', encoder)):
    count = num_params(shapes)
    print(f'  {part:<20} {count / 1e6:9.2f} M params  '
          f'{count * size / 2**20:9.1f} MiB in {jnp.dtype(dtype).name}')
  return unet_shapes, vae_shapes


def benchmark(name, configs, dtype, time_it=True):
  unet = diffusers.FlaxUNet2DConditionModel(dtype=dtype, **configs['unet'])
  vae = diffusers.FlaxAutoencoderKL(dtype=dtype, **configs['vae'])
  unet_shapes, vae_shapes = _sizes(name, unet, vae, dtype)
  if not time_it:
    print('  (not timed: pass --time_full on an accelerator)')
    return
  tokens, width = configs['text']
  prior = stable_diffusion.make_prior(
      unet, _random(unet_shapes, 0), vae, _random(vae_shapes, 1),
      view_embeddings=np.random.default_rng(2).normal(
          size=(4, tokens, width)).astype(np.float32),
      uncond_embedding=np.zeros((tokens, width), np.float32),
      schedule=stable_diffusion.alphas_cumprod(SCHEDULE), dtype=dtype)
  batch = _BATCH.value
  key = jax.random.key(0)
  images = jax.random.uniform(key, (batch, _RENDER.value, _RENDER.value, 3))
  latent = unet.sample_size
  z = jnp.zeros((2 * batch, latent, latent, unet.in_channels))
  t = jnp.full((2 * batch,), 500, jnp.int32)
  emb = jnp.zeros((2 * batch, tokens, width))
  azimuth = jnp.zeros((batch,))
  elevation = jnp.zeros((batch,))

  _, unet_s = _timed(f'UNet forward, batch {2 * batch}',
                     prior.predict_noise, prior.params, z, t, emb)

  def encode_fwd_bwd(params, images):
    x, vjp = jax.vjp(lambda im: prior.encode(params, im), images)
    return vjp(jnp.ones_like(x))[0]

  _timed(f'VAE encode fwd+bwd, {_RENDER.value}px->'
         f'{vae.sample_size}px', encode_fwd_bwd, prior.params, images)

  def make_step(**fix):
    def step(prior, images, key):
      def total(images):
        loss, aux = sds.sds_loss(prior, images, azimuth, elevation, key,
                                 scale=100.0, t_min=0.02, t_max=0.98,
                                 weighting='sigma2', **fix)
        return jnp.sum(loss), aux
      return jax.value_and_grad(total, has_aux=True)(images)
    return step

  _, sds_s = _timed('sds_loss value_and_grad (images)', make_step(), prior,
                    images, key)
  print(f'  {"SDS overhead over the UNet forward":<34} '
        f'{(sds_s - unet_s) * 1e3:9.2f} ms')
  # The Janus fixes: Perp-Neg's four UNet passes per view against two,
  # timed alternately so that both see the same machine load.
  plain = jax.jit(make_step()).lower(prior, images, key).compile()
  perp = jax.jit(make_step(perp_neg=views.PERP_NEG_DEFAULTS)).lower(
      prior, images, key).compile()
  times = {'plain': [], 'perp_neg': []}
  for _ in range(_REPEATS.value + 1):  # The first round warms up.
    for name, fn in (('plain', plain), ('perp_neg', perp)):
      start = time.perf_counter()
      jax.block_until_ready(fn(prior, images, key))
      times[name].append(time.perf_counter() - start)
  plain_s, perp_s = (statistics.median(times[n][1:]) for n in times)
  print(f'  {"SDS step, plain CFG (2B passes)":<34} {plain_s * 1e3:9.2f} ms')
  print(f'  {"SDS step, Perp-Neg (4B passes)":<34} {perp_s * 1e3:9.2f} ms'
        f'   ({perp_s / plain_s:.2f}x)')


def main(argv):
  del argv
  dtype = stable_diffusion.resolve_dtype(_DTYPE.value)
  if 'tiny' in _MODELS.value:
    benchmark('tiny (tests/tiny_models.py sizes)', TINY, dtype)
  if 'sd15' in _MODELS.value:
    benchmark('Stable Diffusion v1.5 shape', SD15, dtype,
              time_it=_TIME_FULL.value)


if __name__ == '__main__':
  app.run(main)
