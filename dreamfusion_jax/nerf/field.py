"""The neural field: position -> (density, albedo), and the background.

Two fields, chosen by `config.nerf.field`:
  'mlp'      the paper's (section 3.1, A.2): positional encoding, a dense
             layer, residual blocks of LayerNorm -> SiLU -> Dense, and heads.
  'hashgrid' Instant-NGP's multiresolution hash encoding with a small MLP,
             which converges in far fewer steps.

Both add a density blob b(x) to the pre-activation density and squash
albedo with a sigmoid; `nerf.density_activation` and `nerf.blob` choose

  tau(x) = exp(raw(x) + b(x)),  b(x) = lambda exp(-|x|^2 / (2 s^2))   (paper)
  tau(x) = softplus(raw(x) + b(x)),  b(x) = lambda (1 - |x| / s)    (Magic3D)

with lambda = nerf.blob_density and s = nerf.blob_radius. With raw ~ 0 at
initialisation the paper's pair fills the whole bound with density about 1
(a fog: every pixel at least 86% opaque at the Stable Diffusion recipe's
cameras), while the Magic3D pair at (10, 0.5) is a ball of radius 0.5 in
empty space (its density outside r = 0.75 is below 0.01).

The hash grid can be coarse to fine (`nerf.hash_start_levels`): only the
coarsest levels are active at first, and `active_params` zeroes the tables
of the others, which then give no features and get no gradient.

The background is an MLP of the encoded view direction or a constant colour.
"""

import functools
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dreamfusion_jax import errors
from dreamfusion_jax import numerics
from dreamfusion_jax.nerf import encoding


class ResidualBlock(nn.Module):
  """Pre-activation residual block: h + Dense(SiLU(LN(Dense(SiLU(LN(h))))))."""

  width: int

  @nn.compact
  def __call__(self, h):
    y = nn.Dense(self.width)(nn.silu(nn.LayerNorm()(h)))
    y = nn.Dense(self.width)(nn.silu(nn.LayerNorm()(y)))
    return h + y


class MLPTrunk(nn.Module):
  """Positional encoding, a dense stem and residual blocks -> 4 raw outputs."""

  num_frequencies: int
  width: int
  num_blocks: int
  bound: float

  @nn.compact
  def __call__(self, x):
    h = encoding.positional_encoding(x / self.bound, self.num_frequencies)
    h = nn.Dense(self.width)(h)
    for _ in range(self.num_blocks):
      h = ResidualBlock(self.width)(h)
    h = nn.silu(nn.LayerNorm()(h))
    return nn.Dense(4)(h)


class HashTrunk(nn.Module):
  """Hash encoding and a small SiLU MLP -> 4 raw outputs."""

  num_levels: int
  features: int
  log2_table_size: int
  min_resolution: int
  max_resolution: int
  width: int
  num_layers: int
  bound: float

  @nn.compact
  def __call__(self, x):
    h = encoding.HashEncoding(
        num_levels=self.num_levels, features=self.features,
        log2_table_size=self.log2_table_size,
        min_resolution=self.min_resolution,
        max_resolution=self.max_resolution, bound=self.bound,
        name='hash')(x)
    h = jnp.concatenate([x / self.bound, h], axis=-1)
    for _ in range(self.num_layers):
      h = nn.silu(nn.Dense(self.width)(h))
    return nn.Dense(4)(h)


class Background(nn.Module):
  """Background colour as a function of the unit view direction."""

  kind: str
  num_frequencies: int
  width: int
  color: Sequence[float]

  @nn.compact
  def __call__(self, directions):
    """[..., 3] -> [..., 3] in [0, 1]."""
    if self.kind == 'constant':
      return jnp.broadcast_to(jnp.asarray(self.color, directions.dtype),
                              directions.shape)
    h = encoding.positional_encoding(directions, self.num_frequencies)
    h = nn.silu(nn.Dense(self.width)(h))
    return nn.sigmoid(nn.Dense(3)(h))


class NeRF(nn.Module):
  """The scene: a field inside the bounding sphere and a background.

  Use `make_model(config)`; call methods through `model.apply(params, ...,
  method=...)`.
  """

  trunk: nn.Module
  background_model: nn.Module
  blob_density: float
  blob_radius: float
  blob_kind: str = 'paper'
  density_activation: str = 'exp'

  def blob(self, x):
    """Density blob added before the activation: [..., 3] -> [...]."""
    sq = jnp.sum(x * x, axis=-1)
    if self.blob_kind == 'magic3d':
      return self.blob_density * (1.0 - numerics.safe_sqrt(sq) /
                                  self.blob_radius)
    return self.blob_density * jnp.exp(-sq / (2.0 * self.blob_radius ** 2))

  def activate(self, raw):
    """Density tau >= 0 from the pre-activation density (blob included)."""
    return activate(self.density_activation, raw)

  def raw_density_and_albedo(self, x) -> Tuple[jax.Array, jax.Array]:
    """Pre-activation density (blob included) [...] and albedo [..., 3]."""
    out = self.trunk(x)
    return out[..., 0] + self.blob(x), nn.sigmoid(out[..., 1:])

  def density_and_albedo(self, x) -> Tuple[jax.Array, jax.Array]:
    """Density tau >= 0 [...] and albedo rho in [0, 1] [..., 3]."""
    raw, albedo = self.raw_density_and_albedo(x)
    return self.activate(raw), albedo

  def background(self, directions):
    """Background colour [..., 3] for unit view directions [..., 3]."""
    return self.background_model(directions)

  def __call__(self, x, directions):
    """Evaluates everything once; used to initialise the parameters."""
    return self.density_and_albedo(x), self.background(directions)


DENSITY_ACTIVATIONS = ('exp', 'softplus')
BLOBS = ('paper', 'magic3d')


def activate(kind: str, raw):
  """exp (the paper's; gradients clipped in numerics) or softplus."""
  if kind == 'softplus':
    return jax.nn.softplus(raw)
  return numerics.safe_exp(raw)


def make_model(config: ml_collections.ConfigDict) -> NeRF:
  """The NeRF described by `config.nerf` (and `config.render.scene_radius`)."""
  c = config.nerf
  bound = config.render.scene_radius
  if c.field == 'mlp':
    trunk = MLPTrunk(num_frequencies=c.num_frequencies, width=c.mlp_width,
                     num_blocks=c.mlp_blocks, bound=bound)
  elif c.field == 'hashgrid':
    trunk = HashTrunk(num_levels=c.hash_levels, features=c.hash_features,
                      log2_table_size=c.hash_log2_table_size,
                      min_resolution=c.hash_min_resolution,
                      max_resolution=c.hash_max_resolution,
                      width=c.hash_mlp_width, num_layers=c.hash_mlp_layers,
                      bound=bound)
  else:
    raise errors.UserError(
        f"nerf.field = '{c.field}' is unknown; use 'mlp' or 'hashgrid'.")
  if c.background not in ('mlp', 'constant'):
    raise errors.UserError(
        f"nerf.background = '{c.background}' is unknown; use 'mlp' or "
        "'constant'.")
  background = Background(kind=c.background,
                          num_frequencies=c.background_frequencies,
                          width=c.background_width,
                          color=tuple(c.background_color))
  return NeRF(trunk=trunk, background_model=background,
              blob_density=c.blob_density, blob_radius=c.blob_radius,
              blob_kind=c.blob, density_activation=c.density_activation)


def active_levels(step, nerf_config: ml_collections.ConfigDict):
  """Hash-grid levels in use at `step` (coarse to fine; traceable).

  All nerf.hash_levels when nerf.hash_start_levels is 0; otherwise
  hash_start_levels until hash_level_start_step, then one more every
  hash_level_every_steps (threestudio's progressive grid).
  """
  c = nerf_config
  if not c.hash_start_levels:
    return jnp.asarray(c.hash_levels, jnp.int32)
  added = (step - c.hash_level_start_step) // c.hash_level_every_steps + 1
  added = jnp.where(step >= c.hash_level_start_step, added, 0)
  return jnp.minimum(c.hash_start_levels + added, c.hash_levels).astype(
      jnp.int32)


def active_params(params, step, config: ml_collections.ConfigDict):
  """`params` with the hash tables of not-yet-active levels zeroed.

  Zeroed inside the loss, a level's table gives no features and receives no
  gradient, so it stays as initialised until its level becomes active. A
  no-op for the MLP field and for a hash grid without progression.
  """
  c = config.nerf
  if c.field != 'hashgrid' or not c.hash_start_levels:
    return params
  mask = (jnp.arange(c.hash_levels) < active_levels(step, c)).astype(
      jnp.float32)

  def apply(path, leaf):
    if any(getattr(k, 'key', None) == 'tables' for k in path):
      return leaf * mask[:, None, None].astype(leaf.dtype)
    return leaf
  return jax.tree_util.tree_map_with_path(apply, params)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError with one sentence for an invalid `nerf` group."""
  c = config.nerf
  if c.density_activation not in DENSITY_ACTIVATIONS:
    raise errors.UserError(
        f"nerf.density_activation = '{c.density_activation}' is unknown; "
        f"use one of {', '.join(repr(a) for a in DENSITY_ACTIVATIONS)}.")
  if c.blob not in BLOBS:
    raise errors.UserError(
        f"nerf.blob = '{c.blob}' is unknown; use one of "
        f"{', '.join(repr(b) for b in BLOBS)}.")
  if c.blob_radius <= 0:
    raise errors.UserError(
        f'nerf.blob_radius = {c.blob_radius} must be positive.')
  if not 0 <= c.hash_start_levels <= c.hash_levels:
    raise errors.UserError(
        f'nerf.hash_start_levels = {c.hash_start_levels} must lie in '
        f'[0, nerf.hash_levels = {c.hash_levels}]; 0 trains every level '
        'from the start.')
  if c.hash_start_levels and (c.hash_level_every_steps < 1 or
                              c.hash_level_start_step < 0):
    raise errors.UserError(
        f'nerf.hash_level_every_steps = {c.hash_level_every_steps} and '
        f'nerf.hash_level_start_step = {c.hash_level_start_step} must be '
        'at least 1 and 0 for a progressive hash grid.')


def init_params(key, model: NeRF):
  """Initial parameters of `model`."""
  x = jnp.zeros((1, 3), jnp.float32)
  return model.init(key, x, x)


def _density(model, params, points):
  return model.apply(params, points, method=model.density_and_albedo)[0]


def _albedo(model, params, points):
  return model.apply(params, points, method=model.density_and_albedo)[1]


def point_functions(model: NeRF, params):
  """(density_fn, albedo_fn) of a NeRF: [N, 3] -> [N] and [N, 3] -> [N, 3].

  Both are `jax.tree_util.Partial`s: the params travel as traced pytree
  leaves, not compile-time constants, which keeps compilation fast for
  large (hash-grid) fields when the functions are passed into jit.
  """
  return (jax.tree_util.Partial(functools.partial(_density, model), params),
          jax.tree_util.Partial(functools.partial(_albedo, model), params))
