"""Which text embeddings guide a camera, and how: the Janus fixes.

DreamFusion conditions each render on the nearest view prompt ('<prompt>,
front view', ...; paper section 3.2, DESIGN.md section 4). A prior that
shows a prompt's front far more often than its back, and draws a front for
'..., back view' too, still pulls every render towards a front: the object
grows a face (a nose) on its back, the Janus problem. Three fixes, each a
`guidance.` config key, built from a prior's embeddings only, so they run
with every prior:

* negative view prompts (guidance.negative_view_prompts): classifier-free
  guidance away from the views a camera must not show, instead of away from
  the empty prompt,

    eps_hat = eps(z; n_v) + s (eps(z; y_v) - eps(z; n_v)),

  with n_v the embedding of '<prompt>, back view' for a front camera
  (NEGATIVE_VIEWS; `Prior.negative_view_embeddings`).
* interpolated view embeddings (guidance.view_interpolation): y(az) mixes
  the front, side and back embeddings linearly in azimuth instead of
  jumping between them at 45 and 135 degrees (`interpolation_weights`).
* Perp-Neg (Armandpour et al. 2023, as threestudio parametrises it;
  guidance.perp_neg): the interpolated y(az), and negative views whose
  directions Delta_i = eps(z; n_i) - eps(z; empty) enter only through their
  components perpendicular to Delta_pos = eps(z; y(az)) - eps(z; empty),

    eps_hat = eps_u + s (Delta_pos + sum_i w_i perp(Delta_i, Delta_pos)),

  so a negative removes what is specific to the wrong view without
  cancelling what it shares with the right one (the object itself). The
  weights w_i <= 0 decay with the distance to the negative view
  (`perp_neg_negatives`). Four UNet passes per view instead of two.
"""

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

from dreamfusion_jax.guidance import prior as prior_lib

FRONT, SIDE, BACK, OVERHEAD = range(len(prior_lib.VIEWS))
# The views each view's negative prompt names, in VIEWS order: a front must
# not look like a back, a side like a front or a back, a back like a front;
# overhead keeps the ordinary negative (or empty) prompt.
NEGATIVE_VIEWS = (('back',), ('front', 'back'), ('front',), ())
# threestudio's Perp-Neg weights (a, b, c) of w = -(a exp(-b r) + c), by
# the negative view and the interpolation segment: the side negative between
# side and back (f_sb), the front negative between side and back (f_fsb),
# the front and the side negatives between front and side (f_fs, f_sf).
PERP_NEG_DEFAULTS = ((1.0, 0.5, -0.606), (1.0, 0.5, 0.967),
                     (4.0, 0.5, -2.426), (4.0, 0.5, -2.426))

PerpNegWeights = Sequence[Sequence[float]]  # (f_sb, f_fsb, f_fs, f_sf)


def negative_view_prompts(prompt: str, negative_prompt: str = '') -> list:
  """Each view's negative prompt, in VIEWS order (NEGATIVE_VIEWS).

  '<prompt>, back view' for the front, '<prompt>, front view, back view' for
  the side, '<prompt>, front view' for the back; overhead names no view and
  keeps `negative_prompt` ('' is the empty prompt).
  """
  return [f'{prompt}, ' + ', '.join(f'{n} view' for n in names)
          if names else negative_prompt for names in NEGATIVE_VIEWS]


def _signed_azimuth(azimuth):
  """Degrees wrapped to [-180, 180)."""
  return jnp.mod(azimuth + 180.0, 360.0) - 180.0


def interpolation_weights(azimuth: jax.Array, elevation: jax.Array,
                          overhead_elevation: float = 60.0) -> jax.Array:
  """[B, len(VIEWS)] weights of the view embeddings mixed for each camera.

  With |az| in degrees: between front and side (|az| < 90) r = 1 - |az|/90
  and y = r y_front + (1 - r) y_side; between side and back r = 2 - |az|/90
  and y = r y_side + (1 - r) y_back (threestudio's `use_perp_neg`
  interpolation). So az = 0 gives the front, |az| = 90 the side, 180 the
  back. Above `overhead_elevation` the overhead embedding, as for the
  nearest view. Each row sums to 1.

  Args:
    azimuth: [B] degrees, any range.
    elevation: [B] degrees.

  Returns:
    [B, len(VIEWS)] float32.
  """
  az = jnp.abs(_signed_azimuth(jnp.asarray(azimuth, jnp.float32)))
  front_side = az < 90.0
  r = jnp.where(front_side, 1.0 - az / 90.0, 2.0 - az / 90.0)
  zero = jnp.zeros_like(r)
  w = jnp.stack([jnp.where(front_side, r, zero),
                 jnp.where(front_side, 1.0 - r, r),
                 jnp.where(front_side, zero, 1.0 - r), zero], axis=-1)
  overhead = jax.nn.one_hot(OVERHEAD, len(prior_lib.VIEWS))
  return jnp.where((elevation > overhead_elevation)[:, None], overhead, w)


def mix(weights: jax.Array, embeddings: jax.Array) -> jax.Array:
  """sum_v weights[b, v] embeddings[v]: [B, V] x [V, ...] -> [B, ...]."""
  return jnp.tensordot(weights, embeddings.astype(jnp.float32), axes=1,
                       precision=jax.lax.Precision.HIGHEST)


def _decay(abc, r):
  """a exp(-b r) + c, threestudio's shifted exponential decay."""
  a, b, c = abc
  return a * jnp.exp(-b * r) + c


def perp_neg_negatives(azimuth: jax.Array, elevation: jax.Array,
                       weights: PerpNegWeights = PERP_NEG_DEFAULTS,
                       overhead_elevation: float = 60.0
                       ) -> Tuple[jax.Array, jax.Array]:
  """Perp-Neg's two negative views per camera and their weights.

  With r as in `interpolation_weights`: between front and side the
  negatives are the front, weight -f_fs(r), and the side, weight
  -f_sf(1 - r); between side and back the side, -f_sb(r), and the front,
  -f_fsb(r). With the default constants a negative's weight is about 0 when
  the camera is at that view (f_fs(1) = 4 e^-0.5 - 2.426 = 0) and grows
  away from it: a front camera is pushed from the side by 1.57, a back
  camera from the front by 1.97 and from the side by 0.39. Overhead cameras
  get weight 0 (their two passes are dummies, kept for a static batch).

  Args:
    azimuth: [B] degrees.
    elevation: [B] degrees.
    weights: (f_sb, f_fsb, f_fs, f_sf), each (a, b, c).
    overhead_elevation: above it, no negatives.

  Returns:
    views [B, 2] int32 indices into VIEWS and w [B, 2] float32 (<= 0 for
    the default constants).
  """
  f_sb, f_fsb, f_fs, f_sf = weights
  az = jnp.abs(_signed_azimuth(jnp.asarray(azimuth, jnp.float32)))
  front_side = az < 90.0
  r = jnp.where(front_side, 1.0 - az / 90.0, 2.0 - az / 90.0)
  views = jnp.where(front_side[:, None], jnp.array([FRONT, SIDE]),
                    jnp.array([SIDE, FRONT])).astype(jnp.int32)
  w = jnp.where(front_side[:, None],
                jnp.stack([-_decay(f_fs, r), -_decay(f_sf, 1.0 - r)], -1),
                jnp.stack([-_decay(f_sb, r), -_decay(f_fsb, r)], -1))
  w = jnp.where((elevation > overhead_elevation)[:, None], 0.0, w)
  return views, w.astype(jnp.float32)


def perpendicular(x: jax.Array, y: jax.Array) -> jax.Array:
  """x - (<x, y> / |y|^2) y per sample: x's component orthogonal to y.

  Args:
    x, y: [B, ...]; the inner products are over all but the first axis.

  Returns:
    [B, ...]; x itself where y = 0.
  """
  axes = tuple(range(1, x.ndim))
  xy = jnp.sum(x * y, axis=axes, keepdims=True)
  yy = jnp.sum(y * y, axis=axes, keepdims=True)
  return x - jnp.where(yy > 0, xy / jnp.where(yy > 0, yy, 1.0), 0.0) * y


def perp_neg_guidance(eps_pos: jax.Array, eps_uncond: jax.Array,
                      eps_negs: Sequence[jax.Array], neg_weights: jax.Array,
                      scale) -> jax.Array:
  """eps_u + s (Delta_pos + sum_i w_i perp(Delta_i, Delta_pos)).

  Delta_pos = eps_pos - eps_u and Delta_i = eps_negs[i] - eps_u. With all
  w_i = 0 this is classifier-free guidance (sds.classifier_free_guidance).

  Args:
    eps_pos, eps_uncond: [B, h, w, c] predictions for the (interpolated)
      view embedding and the unconditional one.
    eps_negs: K arrays [B, h, w, c], the negative views' predictions.
    neg_weights: [B, K].
    scale: the guidance scale s.
  """
  delta_pos = eps_pos - eps_uncond
  total = delta_pos
  for i, eps_neg in enumerate(eps_negs):
    w = neg_weights[:, i].reshape((-1,) + (1,) * (delta_pos.ndim - 1))
    total = total + w * perpendicular(eps_neg - eps_uncond, delta_pos)
  return eps_uncond + scale * total
