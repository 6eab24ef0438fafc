"""Shading: albedo only, Lambertian, textureless (paper section 3.1).

A shading mode is three numbers per view, so the mode is chosen inside jit
from a key with arithmetic instead of Python branches:

  c = rho' * (diffuse * max(0, n . l) + ambient),
  rho' = 1 if textureless else rho.

Albedo only is (ambient 1, diffuse 0), which ignores the light; the paper's
lit mode is (0.1, 0.9); textureless replaces the albedo by white.
"""

import flax
import jax
import jax.numpy as jnp
import ml_collections

from dreamfusion_jax import errors
from dreamfusion_jax import numerics


@flax.struct.dataclass
class ShadingParams:
  """Per-view shading mode; every field has shape [...] (e.g. [B] or [])."""

  ambient: jax.Array
  diffuse: jax.Array
  textureless: jax.Array  # 1.0 replaces the albedo by white, 0.0 keeps it.


def albedo_only(shape=()) -> ShadingParams:
  return ShadingParams(ambient=jnp.ones(shape), diffuse=jnp.zeros(shape),
                       textureless=jnp.zeros(shape))


def lambertian(shape=(), ambient=0.1, diffuse=0.9,
               textureless=False) -> ShadingParams:
  return ShadingParams(ambient=jnp.full(shape, ambient),
                       diffuse=jnp.full(shape, diffuse),
                       textureless=jnp.full(shape, float(textureless)))


def sample(key, step, shading_config: ml_collections.ConfigDict,
           num: int) -> ShadingParams:
  """The paper's shading mix for `num` views at `step` (inside jit).

  Albedo only before `albedo_steps`; afterwards Lambertian with probability
  `lit_prob`, and of the lit views a share `textureless_prob` textureless.

  Args:
    key: PRNG key.
    step: scalar int, the optimisation step.
    shading_config: the `shading` group of the config.
    num: number of views.
  """
  c = shading_config
  k_lit, k_tex = jax.random.split(key)
  warm = step >= c.albedo_steps
  lit = warm & (jax.random.uniform(k_lit, (num,)) < c.lit_prob)
  textureless = lit & (jax.random.uniform(k_tex, (num,)) < c.textureless_prob)
  return ShadingParams(
      ambient=jnp.where(lit, c.ambient, 1.0),
      diffuse=jnp.where(lit, c.diffuse, 0.0),
      textureless=textureless.astype(jnp.float32))


def random_backgrounds(key, shading_config: ml_collections.ConfigDict,
                       num: int):
  """Which of `num` views get a random solid background, and its colour.

  With probability `random_background_prob` a view's background is a solid
  colour instead of the background MLP's: uniform in [0, 1]^3, or drawn
  from `random_background_colors` when that lists any.

  Returns:
    use [num] bool and colors [num, 3] float32.
  """
  c = shading_config
  k_use, k_color = jax.random.split(key)
  use = jax.random.uniform(k_use, (num,)) < c.random_background_prob
  if c.random_background_colors:
    palette = jnp.asarray(c.random_background_colors, jnp.float32)
    colors = palette[jax.random.randint(k_color, (num,), 0, len(palette))]
  else:
    colors = jax.random.uniform(k_color, (num, 3))
  return use, colors


def replace_background(rgb, opacity, background, use, colors):
  """rgb [B, H, W, 3] with `colors` [B, 3] behind the views where `use`.

  The render composited C = sum_i w_i c_i + (1 - opacity) background, so
  swapping the background adds (1 - opacity)(colour - background).
  """
  swap = jnp.where(use[:, None, None, None],
                   colors[:, None, None, :] - background, 0.0)
  return rgb + (1.0 - opacity[..., None]) * swap


def lambert(normals, points, light_position):
  """max(0, n . l) for unit normals [..., 3] and a point light: [...].

  l = (light - mu) / |light - mu| is the unit direction to the light.
  """
  light_dir = numerics.safe_normalize(light_position - points)
  return jnp.maximum(jnp.sum(normals * light_dir, axis=-1), 0.0)


def shade(albedo, normals, points, light_position, params: ShadingParams):
  """Colour of surface points under a white point light.

  Args:
    albedo: [..., 3] in [0, 1].
    normals: [..., 3] unit normals.
    points: [..., 3] world positions mu (the light direction is l - mu).
    light_position: [..., 3] broadcastable to points.
    params: ShadingParams broadcastable to albedo[..., 0].

  Returns:
    [..., 3] colours.
  """
  n_dot_l = lambert(normals, points, light_position)
  ambient = jnp.asarray(params.ambient)[..., None]
  diffuse = jnp.asarray(params.diffuse)[..., None]
  tex = jnp.asarray(params.textureless)[..., None]
  rho = tex + (1.0 - tex) * albedo
  return rho * (diffuse * n_dot_l[..., None] + ambient)


def is_rgb(value) -> bool:
  """Whether a config value is an RGB triple in [0, 1]."""
  return (isinstance(value, (tuple, list)) and len(value) == 3 and
          all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0
              for v in value))


def validate(shading_config: ml_collections.ConfigDict) -> None:
  c = shading_config
  for name in ('lit_prob', 'textureless_prob'):
    if not 0.0 <= c[name] <= 1.0:
      raise errors.UserError(
          f'shading.{name} = {c[name]} is not a probability; use [0, 1].')
  if not 0.0 <= c.random_background_prob <= 1.0:
    raise errors.UserError(
        f'shading.random_background_prob = {c.random_background_prob} is '
        'not a probability; use [0, 1].')
  colors = c.random_background_colors
  if not all(is_rgb(v) for v in colors):
    raise errors.UserError(
        f'shading.random_background_colors = {colors} must be RGB triples in '
        '[0, 1], or () for uniformly random colours.')
  if c.albedo_steps < 0 or c.ambient < 0 or c.diffuse < 0:
    raise errors.UserError(
        'shading.albedo_steps, shading.ambient and shading.diffuse must be '
        '>= 0.')
