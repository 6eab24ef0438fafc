"""Input encodings of the field: sinusoidal and multiresolution hash grid.

The positional encoding is NeRF's: gamma(x) = [x, sin(2^k pi x), cos(2^k pi x)]
for k < L (the paper uses L = 8 with mip-NeRF's integrated variant; this is
the point-sample form).

The hash grid is Instant-NGP's (Mueller et al. 2022, section 3): L levels of
resolution N_l = floor(N_min * b^l), b = exp((ln N_max - ln N_min) / (L - 1));
each level stores T feature vectors of size F; a point's 8 surrounding grid
vertices are indexed directly when the level's (N_l + 1)^3 vertices fit in T
and by the spatial hash (x * 1) xor (y * 2654435761) xor (z * 805459861) mod T
otherwise, and their features are trilinearly interpolated. All levels are
evaluated at once with gathers, no Python loop over levels.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def positional_encoding(x, num_frequencies: int, include_input: bool = True):
  """Sinusoidal encoding: [..., D] -> [..., D * (2 L + include_input)]."""
  scales = 2.0 ** jnp.arange(num_frequencies, dtype=x.dtype) * jnp.pi
  xs = (x[..., None, :] * scales[:, None]).reshape(*x.shape[:-1], -1)
  features = [jnp.sin(xs), jnp.cos(xs)]
  if include_input:
    features.insert(0, x)
  return jnp.concatenate(features, axis=-1)


# Corner offsets of a grid cell, [8, 3] in binary order.
_CORNERS = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)],
                    dtype=np.uint32)
_PRIMES = np.array([1, 2654435761, 805459861], dtype=np.uint32)


def _symmetric_uniform(scale):
  """U(-scale, scale) initialiser (Instant-NGP initialises tables so)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def level_resolutions(num_levels: int, min_resolution: int,
                      max_resolution: int) -> np.ndarray:
  """Grid resolution of each level, [L] int (Instant-NGP eq. 2-3)."""
  if num_levels == 1:
    return np.array([min_resolution], np.int64)
  growth = np.exp((np.log(max_resolution) - np.log(min_resolution)) /
                  (num_levels - 1))
  return np.floor(min_resolution * growth ** np.arange(num_levels)).astype(
      np.int64)


class HashEncoding(nn.Module):
  """Multiresolution hash encoding of points in [-bound, bound]^3.

  Attributes:
    num_levels: L.
    features: F, features per table entry.
    log2_table_size: log2 T.
    min_resolution: N_min.
    max_resolution: N_max.
    bound: half-width of the encoded cube; points outside are clamped.
  """

  num_levels: int = 16
  features: int = 2
  log2_table_size: int = 19
  min_resolution: int = 16
  max_resolution: int = 2048
  bound: float = 1.4

  @nn.compact
  def __call__(self, x):
    """[..., 3] -> [..., L * F]."""
    table_size = 2 ** self.log2_table_size
    tables = self.param('tables', _symmetric_uniform(1e-4),
                        (self.num_levels, table_size, self.features))
    res = level_resolutions(self.num_levels, self.min_resolution,
                            self.max_resolution)
    dense = (res + 1) ** 3 <= table_size  # [L] static
    batch_shape = x.shape[:-1]
    u = jnp.clip((x.reshape(-1, 3) / self.bound + 1.0) * 0.5, 0.0, 1.0)
    pos = u[:, None, :] * jnp.asarray(res, jnp.float32)[None, :, None]
    cell = jnp.minimum(jnp.floor(pos), jnp.asarray(res - 1, jnp.float32)[
        None, :, None])
    frac = pos - cell  # [P, L, 3]
    corner = cell.astype(jnp.uint32)[:, :, None, :] + _CORNERS  # [P, L, 8, 3]

    stride = jnp.asarray(res + 1, jnp.uint32)[None, :, None]
    dense_idx = (corner[..., 0] + corner[..., 1] * stride +
                 corner[..., 2] * stride * stride)
    hashed = corner * _PRIMES
    hash_idx = hashed[..., 0] ^ hashed[..., 1] ^ hashed[..., 2]
    idx = jnp.where(jnp.asarray(dense)[None, :, None], dense_idx, hash_idx)
    idx = (idx % jnp.uint32(table_size)).astype(jnp.int32)  # [P, L, 8]

    level = jnp.arange(self.num_levels)[None, :, None]
    feats = tables[level, idx]  # [P, L, 8, F]
    # Trilinear weights are a product of one linear weight per axis; the
    # corner index is 4 bx + 2 by + bz, so feats splits into [2, 2, 2] and
    # one contraction applies the three axes' weights without forming the
    # [P, L, 8] weight tensor. Its backward pass is about 1.7x cheaper than
    # that of prod over a [P, L, 8, 3] tensor (experiments/benchmark_objects).
    wx, wy, wz = (jnp.stack([1.0 - frac[..., k], frac[..., k]], axis=-1)
                  for k in range(3))  # [P, L, 2] each
    feats = feats.reshape(*feats.shape[:2], 2, 2, 2, self.features)
    out = jnp.einsum('pla,plb,plc,plabcf->plf', wx, wy, wz, feats)  # [P, L, F]
    return out.reshape(*batch_shape, self.num_levels * self.features)
