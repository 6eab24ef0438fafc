r"""Where a view bias can act on the toy prior: the posterior's share of fronts.

  python experiments/janus_bias_reach.py [--config=configs/toy.py] \
      [--renders=16] [--draws=8]

The Janus problem needs a prior that answers a back camera's render with a
front. The toy prior is the exact denoiser of its photographs: its posterior
over them weighs each photograph's likelihood against its group weight
(toy/exact_prior.py). For the back view and then the front view, this
script renders the true snowman from held-out cameras of that view (lit as
the photographs are: renders of the right answer), prints which view's
photograph each render is nearest to, then noises the renders at a grid of
timesteps and prints, for that view's prompt at each bias level of
configs/toy_biased.py (and the exact prior), the posterior's share on
front photographs (the nose points at the camera) and on back ones. Where
a share does not move with the bias, no weighting of the views changes the
SDS pull there.

The snowman is symmetric but for its nose, so a front drawn from a back
camera (what Stable Diffusion does on '..., back view') is exactly a front
photograph; the toy prior already holds that image in the back prompt's
distribution, weighted by the bias.
"""

import os
import sys

# Config files import `configs.default` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import ml_collections
import numpy as np

from configs import toy_biased
from dreamfusion_jax import errors
from dreamfusion_jax import launch
from dreamfusion_jax import shading as shading_lib
from dreamfusion_jax.evaluation import janus
from dreamfusion_jax.guidance import prior as prior_lib
from dreamfusion_jax.toy import exact_prior
from dreamfusion_jax.toy import raytrace

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'configs', 'toy.py'), 'A toy config.')
_RENDERS = flags.DEFINE_integer('renders', 16, 'Held-out renders per view.')
_DRAWS = flags.DEFINE_integer('draws', 8, 'Noise draws per render and t.')

SNOWMAN = 'a snowman'
TIMESTEPS = (20, 50, 100, 150, 200, 300, 400, 500, 600, 700, 800, 900, 980)
# Held-out cameras: a key the image set does not use.
_HELD_OUT_SEED = 7


def held_out_renders(config, view: str, count: int) -> np.ndarray:
  """[count, H, W, 3] renders of the snowman from `view`'s held-out cameras.

  In [-1, 1], each on one of toy.background_colors in turn, as photographs.
  """
  cams, views = exact_prior.sample_view_cameras(
      jax.random.key(_HELD_OUT_SEED), config.camera, count)
  keep = np.flatnonzero(views == prior_lib.VIEWS.index(view))
  cams = jax.tree.map(lambda x: x[keep], cams)
  # Lit with probability toy.lit_prob, as the photographs are.
  lit = jax.random.uniform(jax.random.key(_HELD_OUT_SEED + 1),
                           (count,)) < config.toy.lit_prob
  shade = shading_lib.ShadingParams(
      ambient=jnp.where(lit, config.shading.ambient, 1.0),
      diffuse=jnp.where(lit, config.shading.diffuse, 0.0),
      textureless=jnp.zeros((count,)))
  # One call over black, then each render's backdrop where its rays missed
  # (as exact_prior.render_image_set composites the photographs).
  on_black, mask = raytrace.render(SNOWMAN, cams, config.render.resolution,
                                   shade, (0.0, 0.0, 0.0),
                                   config.toy.supersample)
  colors = np.asarray(config.toy.background_colors, np.float32)
  backdrops = colors[np.arange(count) % len(colors)][:, None, None, :]
  uncovered = 1.0 - np.asarray(mask)[..., None]
  images = np.asarray(on_black) + uncovered * backdrops
  return 2.0 * images - 1.0


def main(argv):
  del argv
  config = _CONFIG.value
  if _RENDERS.value < 1 or _DRAWS.value < 1:
    raise errors.UserError(
        f'--renders={_RENDERS.value} and --draws={_DRAWS.value} must both be '
        'at least 1, e.g. --renders=16 --draws=8.')
  config.prompt = SNOWMAN
  params = exact_prior.make_toy_prior(config).params
  key = jax.random.key(0)
  levels = {'exact': janus.EXACT, **toy_biased.LEVELS}
  first = exact_prior.group_index(exact_prior.objects.prompt_index(SNOWMAN), 0)
  front, back = (prior_lib.VIEWS.index(v) for v in ('front', 'back'))
  x = params['images'].reshape(params['images'].shape[0], -1)
  for view in ('back', 'front'):
    v = prior_lib.VIEWS.index(view)
    renders = jnp.asarray(held_out_renders(config, view, _RENDERS.value))
    embeddings = {
        name: jnp.asarray(exact_prior.prompt_weights(
            SNOWMAN, exact_prior.view_weights(ml_collections.ConfigDict({
                'view_frequencies': frequencies,
                'view_adherence': adherence}))[v]))
        for name, (frequencies, adherence) in levels.items()}
    # The nearest photograph of each render among the snowman's, whatever
    # the weights: where the posterior goes as t -> 0 when its group weighs.
    r = renders.reshape(renders.shape[0], -1)
    own = (params['groups'] >= first) & (params['groups'] <
                                         first + exact_prior.NUM_VIEWS)
    d2 = jnp.where(own[None], jnp.sum(x * x, -1)[None] - 2.0 * r @ x.T,
                   jnp.inf)
    nearest = np.asarray(params['groups'][jnp.argmin(d2, axis=1)]) - first
    print(f"\n{_RENDERS.value} held-out {view} renders x {_DRAWS.value} "
          f"noise draws per timestep; the embedding of '{SNOWMAN}, {view} "
          'view\'. Nearest photograph of each render: ' + ', '.join(
              f'{name} {int(np.sum(nearest == i))}'
              for i, name in enumerate(prior_lib.VIEWS)) + '.')
    print('Group weights of front / back: ' + ', '.join(
        f'{n} {float(e[first + front]):.3f} / {float(e[first + back]):.3f}'
        for n, e in embeddings.items()))
    print('| t | a^2/s^2 | ' + ' | '.join(
        f'{n}: front / back' for n in levels) + ' |')
    print('|' + '---|' * (2 + len(levels)))
    for t in TIMESTEPS:
      abar = float(params['alphas_cumprod'][t])
      cells = []
      for name in levels:
        shares = janus.posterior_group_shares(
            params, renders, embeddings[name], t, _DRAWS.value,
            jax.random.fold_in(key, t))[first:first + exact_prior.NUM_VIEWS]
        cells.append(f'{shares[front]:.3f} / {shares[back]:.3f}')
      print(f'| {t} | {abar / (1.0 - abar):.3g} | ' + ' | '.join(cells)
            + ' |')


if __name__ == '__main__':
  launch.run(main)
