"""An occupancy grid: where density can be, and ray samples placed only there.

Most of a render's samples fall in empty space: an object fills a small part
of the bounding sphere. Instant-NGP (Mueller et al. 2022, section 4) keeps a
coarse grid of the field's density and skips empty cells; this module does
the same with static shapes, so the train step still compiles once.

The grid. A [R, R, R] float32 array over the cube [-bound, bound]^3 (bound =
render.scene_radius) holds a decaying maximum of the density in each cell:
every `update_every` steps, `update` evaluates the field at one jittered
point per cell and sets grid = max(decay * grid, density) (the first
update sets grid = density). A cell is occupied when its value exceeds the
threshold or a neighbour's does (one cell of dilation, so that a surface
can grow outward by a cell per update).
A fresh grid is all occupied (`initial_grid`), so the first steps, and the
density blob that starts every run, see the whole bound; space is carved
away only as the field empties it.

The samples. `sample_along_rays` places K samples per ray in the occupied
part of the ray only. Each ray is cut into M candidate bins; the occupied
bins form a piecewise-constant density over the ray, and K stratified draws
of its inverse CDF give sample distances that increase along the ray. Each
sample stands for an equal share of the ray's occupied length L, so its
quadrature width is delta = L / K, and unoccupied stretches (density below
the threshold there) count as empty. A ray that meets no occupied cell gets
delta = 0: its samples are evaluated (the shapes are static) but weigh
nothing. With K a quarter of the stratified count and an object filling a
quarter of each ray, the spacing of the samples on the object is unchanged.
"""

import jax
import jax.numpy as jnp

from dreamfusion_jax import numerics


def initial_grid(resolution: int) -> jax.Array:
  """A grid with every cell occupied until the first update: +inf."""
  return jnp.full((resolution,) * 3, jnp.inf, jnp.float32)


def cell_centers(resolution: int, bound: float) -> jax.Array:
  """Centres of the grid's cells over [-bound, bound]^3: [R, R, R, 3]."""
  c = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) * (
      2.0 * bound / resolution) - bound
  return jnp.stack(jnp.meshgrid(c, c, c, indexing='ij'), axis=-1)


def update(grid: jax.Array, density_fn: numerics.PointFn, key, bound: float,
           decay: float, chunk: int = numerics.DEFAULT_CHUNK) -> jax.Array:
  """grid <- max(decay * grid, density at one jittered point per cell).

  Cells never measured (+inf, `initial_grid`) take the density as it is.

  Args:
    grid: [R, R, R] decayed maximum densities.
    density_fn: points [C, 3] -> densities [C] (traced inside the step).
    key: PRNG key of the jitter (uniform within each cell).
    bound: the grid spans [-bound, bound]^3.
    decay: how fast a cell that empties is forgotten (Instant-NGP: 0.95).
    chunk: points per field evaluation.

  Returns:
    The new [R, R, R] grid.
  """
  resolution = grid.shape[0]
  cell = 2.0 * bound / resolution
  points = cell_centers(resolution, bound) + cell * jax.random.uniform(
      key, grid.shape + (3,), minval=-0.5, maxval=0.5)
  density = jax.lax.stop_gradient(
      numerics.map_in_chunks(density_fn, points, chunk))
  return jnp.where(jnp.isinf(grid), density,
                   jnp.maximum(decay * grid, density))


def occupied(grid: jax.Array, threshold: float) -> jax.Array:
  """Cells whose value, or a neighbour's (3x3x3), exceeds threshold: bool."""
  neighbourhood_max = jax.lax.reduce_window(
      grid, -jnp.inf, jax.lax.max, (3, 3, 3), (1, 1, 1), 'SAME')
  return neighbourhood_max > threshold


def _lookup(mask, points, bound):
  """mask at the cells holding points [..., 3]; False outside the cube."""
  resolution = mask.shape[0]
  ijk = jnp.floor((points + bound) / (2.0 * bound) * resolution).astype(
      jnp.int32)
  inside = jnp.all((ijk >= 0) & (ijk < resolution), axis=-1)
  ijk = jnp.clip(ijk, 0, resolution - 1)
  return inside & mask[ijk[..., 0], ijk[..., 1], ijk[..., 2]]


def sample_along_rays(key, mask, origins, directions, near, far,
                      num_samples: int, num_candidates: int, bound: float):
  """K samples per ray inside its occupied cells (module docstring).

  Args:
    key: PRNG key, a [B] array of keys for rays [B, ...], or None for the
      deterministic midpoints of the K strata.
    mask: [R, R, R] bool occupancy (`occupied`).
    origins, directions: [..., 3] rays (unit directions).
    near, far: [...] the ray's interval inside the bounding sphere.
    num_samples: K.
    num_candidates: M, bins per ray in which occupancy is looked up.
    bound: the grid spans [-bound, bound]^3.

  Returns:
    t: [..., K] increasing sample distances; delta: [..., K] quadrature
    widths (L / K each; 0 on rays that meet no occupied cell).
  """
  width = (far - near)[..., None] / num_candidates  # [..., 1]
  centers = near[..., None] + (jnp.arange(num_candidates) + 0.5) * width
  points = origins[..., None, :] + centers[..., None] * directions[..., None, :]
  bins = _lookup(mask, points, bound).astype(jnp.float32)  # [..., M]
  cdf = jnp.cumsum(bins, axis=-1) * width  # Occupied length up to bin end.
  length = cdf[..., -1:]  # [..., 1]

  u = numerics.stratum_offsets(key, near.shape + (num_samples,))
  target = (jnp.arange(num_samples) + u) / num_samples * length  # [..., K]
  # The bin each target falls in: the first whose cumulative length passes
  # it (a sum of comparisons, which vectorises where searchsorted loops).
  index = jnp.sum(cdf[..., None, :] <= target[..., :, None], axis=-1)
  index = jnp.minimum(index, num_candidates - 1)
  before = jnp.where(
      index > 0,
      jnp.take_along_axis(cdf, jnp.maximum(index - 1, 0), axis=-1), 0.0)
  # Inside an occupied bin, occupied length and distance grow together.
  offset = jnp.clip(target - before, 0.0, width)
  t = near[..., None] + index * width + offset
  delta = jnp.broadcast_to(length / num_samples, t.shape)
  return jax.lax.stop_gradient(t), jax.lax.stop_gradient(delta)
