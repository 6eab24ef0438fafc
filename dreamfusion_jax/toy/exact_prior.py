"""The toy world's diffusion prior: the exact denoiser of a finite image set.

The "pretrained model" is a set of images {x_i} (renders of the toy objects by
`toy.raytrace`), each in one group g(i) = (prompt, view). For data drawn
uniformly from a weighted subset of the set, the forward process
z_t = a_t x_0 + s_t eps (a_t = sqrt(abar_t), s_t = sqrt(1 - abar_t)) has the
exact posterior mean

  E[x_0 | z_t] = sum_i p_i x_i,
  p_i = softmax_i(-|z_t - a_t x_i|^2 / (2 s_t^2) + log w_g(i)),

and the optimal noise prediction eps_hat = (z_t - a_t E[x_0 | z_t]) / s_t
(DESIGN.md section 7). The "text embedding" is the weight vector w over the
G = len(PROMPTS) * len(VIEWS) groups, a distribution over (prompt, view)
(each group holds the same number of images, so w_g is the probability of
drawing from group g). Weight 0 excludes a group (logit -inf). A mixture
of embeddings is the mixture of their image distributions, so interpolated
view embeddings (guidance/views.py) mean what they say.

The prior may be biased like Stable Diffusion's (`view_weights`): a bare
prompt's images show its views in the shares toy.view_frequencies (photos
mostly show the front), and '<prompt>, <view> view' shows that view with
probability toy.view_adherence and otherwise a view drawn from those
shares. The unconditional set is every prompt with those shares. Equal
shares and adherence 1 (the default) give the exact prior: one-hot view
prompts, uniform bare prompts.

The image set is rendered at start-up from a fixed key, independent of
config.seed: like a pretrained model, it is the same for every run. Cameras
come from the training distribution (cameras.sample_cameras with
config.camera); each drawn camera falls in the view bin prior.view_index of
its azimuth and elevation, and the first images_per_view cameras of each bin
are kept (rejection sampling, so each group follows the training
distribution conditioned on its view). The images are what photographs of
the objects would show: in their colours, lit by the sampled point light
(with the config's ambient and diffuse terms) with probability toy.lit_prob
and unlit (albedo only) otherwise; never textureless, since no photograph
of "a blue sphere" is white. The NeRF's textureless renders then receive a
signal about shape only, as they do from Stable Diffusion. Each photograph
stands on each of toy.background_colors (solid backdrops): lit by random
lights, a white object averages to mid-grey, so on a grey backdrop alone
the images of "a snowman" at large t look like an empty backdrop.
"""

import logging
import time
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dreamfusion_jax import cameras as cameras_lib
from dreamfusion_jax import errors
from dreamfusion_jax import shading as shading_lib
from dreamfusion_jax.guidance import prior as prior_lib
from dreamfusion_jax.guidance import views as views_lib
from dreamfusion_jax.toy import objects
from dreamfusion_jax.toy import raytrace

NUM_VIEWS = len(prior_lib.VIEWS)
NUM_GROUPS = len(objects.PROMPTS) * NUM_VIEWS
# The image set's key: a constant, so the prior does not change with
# config.seed.
_IMAGE_SET_SEED = 2022
# Cameras rendered per jitted call (the last chunk is padded).
_CHUNK = 100
# Camera draws per round of rejection sampling, in units of images_per_view,
# and the rounds tried before giving up on a view the ranges never produce.
_DRAWS_PER_ROUND = 16
_MAX_ROUNDS = 8
# Elevation above which a camera's view is 'overhead' (prior.view_index).
_OVERHEAD_ELEVATION = 60.0

_HIGHEST = jax.lax.Precision.HIGHEST


def group_index(prompt: int, view: int) -> int:
  """Group of (prompt index, view index): prompt-major, then VIEWS order."""
  return prompt * NUM_VIEWS + view


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError for a config the toy prior cannot serve.

  Run once per run, with the rest of the config's checks
  (`priors.validate`); `make_toy_prior` assumes a valid config.
  """
  objects.check_prompt(config.prompt)
  if config.negative_prompt and config.negative_prompt not in objects.PROMPTS:
    known = ', '.join(repr(p) for p in objects.PROMPTS)
    raise errors.UserError(
        f'negative_prompt {config.negative_prompt!r} is not a toy-world '
        f'prompt; set --config.negative_prompt to "" or one of {known}.')
  t = config.toy
  if t.images_per_view < 1 or t.supersample < 1 or t.num_timesteps < 2:
    raise errors.UserError(
        'toy.images_per_view and toy.supersample must be >= 1 and '
        f'toy.num_timesteps >= 2; got {t.images_per_view}, {t.supersample} '
        f'and {t.num_timesteps}.')
  if not 0.0 <= t.textureless_prob <= 1.0:
    raise errors.UserError(
        f'toy.textureless_prob = {t.textureless_prob} must lie in [0, 1] '
        '(the share of lit photographs that are untextured).')
  if not 0.0 < t.beta_start < t.beta_end < 1.0:
    raise errors.UserError(
        f'toy.beta_start = {t.beta_start} and toy.beta_end = {t.beta_end} '
        'must satisfy 0 < beta_start < beta_end < 1.')
  freq = t.view_frequencies
  if (len(freq) != NUM_VIEWS or min(freq) < 0.0
      or abs(sum(freq) - 1.0) > 1e-6):
    raise errors.UserError(
        f'toy.view_frequencies = {tuple(freq)} must be {NUM_VIEWS} '
        f'non-negative shares of {", ".join(prior_lib.VIEWS)} that sum to 1.')
  if not 0.0 <= t.view_adherence <= 1.0:
    raise errors.UserError(
        f'toy.view_adherence = {t.view_adherence} is a probability; use a '
        'value in [0, 1] (1: view prompts are always obeyed).')
  colors = t.background_colors
  if not colors or not all(shading_lib.is_rgb(c) for c in colors):
    raise errors.UserError(
        f'toy.background_colors = {colors} must be one or more RGB triples '
        'in [0, 1], e.g. ((0.5, 0.5, 0.5),).')


_sample_cameras = jax.jit(cameras_lib.sample_cameras, static_argnums=(1, 2))
_view_index = jax.jit(prior_lib.view_index)


def _cameras_by_view(key, camera_config: ml_collections.ConfigDict,
                     per_view: int, wanted: Sequence[int]):
  """Rounds of `cameras.sample_cameras`, keeping `per_view` of each view.

  Returns the kept Cameras ([len(wanted) * per_view], in `wanted` order),
  or the list of views it could not fill.
  """
  draws = _DRAWS_PER_ROUND * per_view
  frozen = ml_collections.FrozenConfigDict(camera_config)
  rounds, kept = [], {v: [] for v in wanted}
  for r in range(_MAX_ROUNDS):
    cams = _sample_cameras(jax.random.fold_in(key, r), frozen, draws)
    views = np.asarray(_view_index(cams.azimuth, cams.elevation))
    rounds.append(cams)
    for v in wanted:
      need = per_view - len(kept[v])
      kept[v].extend((r * draws + np.flatnonzero(views == v)[:need]).tolist())
    if all(len(k) == per_view for k in kept.values()):
      index = np.concatenate([np.asarray(kept[v], np.int32) for v in wanted])
      all_cams = jax.tree.map(lambda *xs: jnp.concatenate(xs), *rounds)
      return jax.tree.map(lambda x: x[index], all_cams)
  return [v for v in wanted if len(kept[v]) < per_view]


def sample_view_cameras(key, camera_config: ml_collections.ConfigDict,
                        per_view: int) -> Tuple[cameras_lib.Cameras,
                                                np.ndarray]:
  """Training-distribution cameras, `per_view` in each view bin.

  Draws rounds of cameras with cameras.sample_cameras and keeps, for each
  view v, the first `per_view` cameras with view_index(azimuth, elevation) =
  v. Deterministic given `key`.

  When camera.elevation_range ends at or below the overhead view's 60
  degrees (as the Stable Diffusion recipe's 45 does), training never asks
  for an overhead view, but photographs from above still exist: that view's
  images are taken between 60 and 90 degrees, and serve the unconditional
  set.

  Args:
    key: PRNG key.
    camera_config: the `camera` group of the config.
    per_view: cameras kept per view.

  Returns:
    Cameras with leading shape [len(VIEWS) * per_view], view-major, and the
    [len(VIEWS) * per_view] int32 view of each.

  Raises:
    UserError: when the camera ranges (almost) never produce some view.
  """
  overhead = prior_lib.VIEWS.index('overhead')
  low, high = camera_config.elevation_range
  parts = [(camera_config, list(range(NUM_VIEWS)))]
  if high <= _OVERHEAD_ELEVATION:
    above = ml_collections.ConfigDict(camera_config)
    above.elevation_range = (_OVERHEAD_ELEVATION + 1.0, 90.0)
    parts = [(camera_config, [v for v in range(NUM_VIEWS) if v != overhead]),
             (above, [overhead])]
  found = []
  for i, (config, wanted) in enumerate(parts):
    cams = _cameras_by_view(jax.random.fold_in(key, 1000 * i), config,
                            per_view, wanted)
    if isinstance(cams, list):
      short = [prior_lib.VIEWS[v] for v in cams]
      raise errors.UserError(
          f'the camera ranges (camera.elevation_range = {(low, high)}, '
          f'camera.azimuth_range = {tuple(camera_config.azimuth_range)}) '
          f'rarely or never give {" or ".join(short)} views, which the toy '
          f'prior needs {per_view} images of; widen the ranges or lower '
          'toy.images_per_view.')
    found.append(cams)
  selected = jax.tree.map(lambda *xs: jnp.concatenate(xs), *found)
  views = np.repeat(np.arange(NUM_VIEWS, dtype=np.int32), per_view)
  return selected, views


def render_image_set(config: ml_collections.ConfigDict
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """Renders the prior's image set.

  Args:
    config: the full config (reads camera, shading, render.resolution, toy).

  Each photograph appears once on each of toy.background_colors (solid
  backdrops), in the same group.

  Returns:
    images [N, H, W, 3] float32 in [0, 1], N = len(PROMPTS) *
    len(toy.background_colors) * len(VIEWS) * toy.images_per_view,
    H = W = render.resolution, prompt-major; groups [N] int32, the
    group_index of each image.
  """
  per_view = config.toy.images_per_view
  num = NUM_VIEWS * per_view
  base_key = jax.random.key(_IMAGE_SET_SEED)
  images, groups = [], []
  for p in range(len(objects.PROMPTS)):
    k_cam, k_shade = jax.random.split(jax.random.fold_in(base_key, p))
    cams, views = sample_view_cameras(k_cam, config.camera, per_view)
    lit = jax.random.uniform(k_shade, (num,)) < config.toy.lit_prob
    # Untextured photographs (clay renders, plaster casts), among the lit.
    k_tex = jax.random.fold_in(k_shade, 1)
    textureless = lit & (jax.random.uniform(k_tex, (num,)) <
                         config.toy.textureless_prob)
    shade = shading_lib.ShadingParams(
        ambient=jnp.where(lit, config.shading.ambient, 1.0),
        diffuse=jnp.where(lit, config.shading.diffuse, 0.0),
        textureless=textureless.astype(jnp.float32))
    chunk = min(_CHUNK, num)
    on_black, coverage = [], []
    for start in range(0, num, chunk):
      # Pad the last chunk (by wrapping around) so one compilation serves all.
      index = (start + np.arange(chunk)) % num
      rgb, mask = raytrace.render(
          p, jax.tree.map(lambda x: x[index], cams),
          config.render.resolution, jax.tree.map(lambda x: x[index], shade),
          (0.0, 0.0, 0.0), config.toy.supersample)
      on_black.append(np.asarray(rgb)[:min(chunk, num - start)])
      coverage.append(np.asarray(mask)[:min(chunk, num - start)])
    on_black = np.concatenate(on_black)
    uncovered = 1.0 - np.concatenate(coverage)[..., None]
    # A pixel averages its sub-pixel rays, so the photograph over colour c
    # is the one over black plus c on the share of rays that missed.
    for color in config.toy.background_colors:
      images.append(on_black + uncovered * np.asarray(color, np.float32))
      groups.append(group_index(p, views))
  return (np.concatenate(images).astype(np.float32),
          np.concatenate(groups).astype(np.int32))


def view_weights(toy_config: ml_collections.ConfigDict) -> np.ndarray:
  """[len(VIEWS) + 1, len(VIEWS)] view distributions of a prompt's images.

  Row v < len(VIEWS): what '<prompt>, <view v> view' shows, adherence a
  times view v and otherwise a view drawn from the frequencies f:
  a onehot(v) + (1 - a) f. The last row: the bare prompt's, f. Each row
  sums to 1.
  """
  f = np.asarray(toy_config.view_frequencies, np.float32)
  a = float(toy_config.view_adherence)
  return np.concatenate([a * np.eye(NUM_VIEWS, dtype=np.float32)
                         + (1.0 - a) * f[None], f[None]])


def prompt_weights(prompt: str, view_dist) -> np.ndarray:
  """[G] weights: `view_dist` [len(VIEWS)] on `prompt`'s groups, 0 elsewhere."""
  w = np.zeros(NUM_GROUPS, np.float32)
  p = objects.prompt_index(prompt)
  w[group_index(p, 0):group_index(p + 1, 0)] = view_dist
  return w


def embeddings(config: ml_collections.ConfigDict
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The toy prior's text embeddings: group weight vectors (view_weights).

  Returns:
    view_embeddings [len(VIEWS), G]: row v is '<config.prompt>, <view v>
    view' (one-hot on (prompt, v) for the exact prior), or the bare prompt
    in every row when guidance.view_prompts is False;
    uncond_embedding [G]: every prompt with the bare prompt's shares, or
    config.negative_prompt's groups when it is set;
    negative_view_embeddings [len(VIEWS), G]: row v is the equal mixture of
    the view prompts of views.NEGATIVE_VIEWS[v] ('<prompt>, front view,
    back view' for the side), or the uncond embedding where it names none.
  """
  dist = view_weights(config.toy)
  if config.guidance.view_prompts:
    view_emb = np.stack([prompt_weights(config.prompt, d) for d in dist[:-1]])
  else:
    view_emb = np.tile(prompt_weights(config.prompt, dist[-1]),
                       (NUM_VIEWS, 1))
  if config.negative_prompt:
    uncond = prompt_weights(config.negative_prompt, dist[-1])
  else:
    uncond = np.tile(dist[-1], len(objects.PROMPTS)) / len(objects.PROMPTS)
  negative = np.stack([
      np.mean([prompt_weights(config.prompt,
                              dist[prior_lib.VIEWS.index(n)]) for n in names],
              axis=0) if names else uncond
      for names in views_lib.NEGATIVE_VIEWS])
  return view_emb, uncond.astype(np.float32), negative.astype(np.float32)


def posterior_logits(params, z_t, t, embedding):
  """log p_i + const: the posterior over the set's images given z_t.

  logit_i = (2 a_t z.x_i - a_t^2 |x_i|^2) / (2 s_t^2) + log w_g(i), which is
  -|z_t - a_t x_i|^2 / (2 s_t^2) + log w_g(i) up to the term |z_t|^2, the
  same for every i (dropped: softmax ignores it, and without it no large
  terms cancel). -inf where w_g(i) = 0.

  Args:
    params: from image_set_params.
    z_t: [B, H, W, 3] noisy images.
    t: [B] int32 timesteps.
    embedding: [B, G] group weights (each row with a positive entry).

  Returns:
    [B, N] float32 logits.
  """
  x = params['images']
  x_flat = x.reshape(x.shape[0], -1)  # [N, D]
  z = z_t.reshape(z_t.shape[0], -1).astype(jnp.float32)  # [B, D]
  abar = params['alphas_cumprod'][jnp.clip(t, 0, params['alphas_cumprod']
                                           .shape[0] - 1)]
  a = jnp.sqrt(abar)[:, None]
  s2 = (1.0 - abar)[:, None]
  zx = jnp.matmul(z, x_flat.T, precision=_HIGHEST)  # [B, N]
  logits = (2.0 * a * zx - a * a * params['sq_norms']) / (2.0 * s2)
  w = jnp.asarray(embedding, jnp.float32)[:, params['groups']]  # [B, N]
  return jnp.where(w > 0, logits + jnp.log(jnp.where(w > 0, w, 1.0)),
                   -jnp.inf)


def image_set_params(images, groups, alphas_cumprod) -> dict:
  """The prior's params: its photographs, their groups and the schedule.

  Args:
    images: [N, H, W, 3] photographs in [-1, 1].
    groups: [N] int group index of each photograph.
    alphas_cumprod: [T] noise schedule.

  Returns:
    {'images': [N, H, W, 3] float32, 'groups': [N] int32,
    'sq_norms': [N] |x_i|^2 (fixed, so computed once, not on every step),
    'alphas_cumprod': [T]}.
  """
  images = jnp.asarray(images, jnp.float32)
  flat = images.reshape(images.shape[0], -1)
  return {
      'images': images,
      'groups': jnp.asarray(groups, jnp.int32),
      'sq_norms': jnp.sum(flat * flat, axis=-1),
      'alphas_cumprod': jnp.asarray(alphas_cumprod, jnp.float32),
  }


def posterior_mean(params, z_t, t, embedding):
  """E[x_0 | z_t] = sum_i p_i x_i: [B, H, W, 3] (args as posterior_logits)."""
  p = jax.nn.softmax(posterior_logits(params, z_t, t, embedding), axis=-1)
  x = params['images']
  x0 = jnp.matmul(p, x.reshape(x.shape[0], -1), precision=_HIGHEST)
  return x0.reshape(z_t.shape)


def predict_noise(params, z_t, t, embedding):
  """eps_hat = (z_t - a_t E[x_0 | z_t]) / s_t: the exact optimal denoiser.

  Args:
    params: as in posterior_logits.
    z_t: [B, H, W, 3] noisy images.
    t: [B] int32 timesteps.
    embedding: [B, G] group weights.

  Returns:
    [B, H, W, 3] float32 noise prediction.
  """
  abar = params['alphas_cumprod'][jnp.clip(t, 0, params['alphas_cumprod']
                                           .shape[0] - 1)]
  a = jnp.sqrt(abar)[:, None, None, None]
  s = jnp.sqrt(1.0 - abar)[:, None, None, None]
  x0 = posterior_mean(params, z_t, t, embedding)
  return ((z_t.astype(jnp.float32) - a * x0) / s).astype(jnp.float32)


def encode(params, images):
  """Renders [B, h, w, 3] in [0, 1] -> [B, H, W, 3] in [-1, 1] (x -> 2x - 1).

  Resized (bilinearly, antialiased) to the image set's H x W when h x w
  differs.
  """
  _, height, width, _ = params['images'].shape
  if images.shape[1:3] != (height, width):
    images = jax.image.resize(
        images, (images.shape[0], height, width, images.shape[3]), 'linear')
  return 2.0 * images - 1.0


def make_toy_prior(config: ml_collections.ConfigDict) -> prior_lib.Prior:
  """Builds the toy prior: renders its image set (seconds) and embeddings.

  Args:
    config: the full config; reads prompt, negative_prompt,
      guidance.view_prompts, camera, shading, render.resolution and toy
      (view_frequencies and view_adherence set the bias).

  Returns:
    A prior.Prior whose params are image_set_params' and whose embeddings are
    [G] group-weight vectors, negative view embeddings included.
  """
  start = time.time()
  images, groups = render_image_set(config)
  logging.info('Toy prior: %d images of %dx%d rendered in %.1f s.',
               images.shape[0], images.shape[1], images.shape[2],
               time.time() - start)
  view_emb, uncond, negative = embeddings(config)
  schedule = jnp.asarray(prior_lib.noise_schedule(config.toy.num_timesteps,
                                                  config.toy.beta_start,
                                                  config.toy.beta_end))
  params = image_set_params(2.0 * images - 1.0, groups, schedule)
  return prior_lib.Prior(
      params=params, view_embeddings=jnp.asarray(view_emb),
      uncond_embedding=jnp.asarray(uncond), alphas_cumprod=schedule,
      encode=encode, predict_noise=predict_noise,
      negative_view_embeddings=jnp.asarray(negative))
