"""The NeRF regularisers: each is checked against its defining formula."""

import jax
import jax.numpy as jnp
import numpy as np

from dreamfusion_jax import losses


def test_distortion_matches_its_double_sum():
  rng = np.random.default_rng(0)
  weights = rng.random((6, 16)) / 16
  t = np.sort(rng.uniform(0.5, 3.5, (6, 16)), axis=-1)
  delta = rng.uniform(0.01, 0.2, (6, 16))
  s, d = t / 2.0, delta / 2.0
  expected = np.mean([
      np.sum(w[:, None] * w[None] * np.abs(si[:, None] - si[None]))
      + np.sum(w ** 2 * di) / 3.0
      for w, si, di in zip(weights, s, d)])
  got = losses.distortion(jnp.asarray(weights), jnp.asarray(t),
                          jnp.asarray(delta), 2.0)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_distortion_prefers_one_sharp_surface_to_a_soft_shell():
  n = 64
  t = jnp.linspace(0.0, 2.0, n)
  delta = jnp.full((n,), 2.0 / n)
  # The same opacity (0.9), all at one sample or spread over 16 of them.
  sharp = jnp.zeros(n).at[20].set(0.9)
  soft = jnp.zeros(n).at[20:36].set(0.9 / 16)
  l_sharp = float(losses.distortion(sharp, t, delta, 2.0))
  l_soft = float(losses.distortion(soft, t, delta, 2.0))
  assert l_sharp < l_soft / 5
  # Its gradient pulls the soft shell's outer weights towards its middle.
  grad = jax.grad(lambda w: losses.distortion(w, t, delta, 2.0))(soft)
  assert grad[20] > grad[27] and grad[35] > grad[28]


def test_distortion_is_scale_free_in_the_unit_length():
  rng = np.random.default_rng(1)
  w = jnp.asarray(rng.random((3, 8)) / 8)
  t = jnp.asarray(np.sort(rng.random((3, 8)), -1))
  d = jnp.full((3, 8), 0.1)
  np.testing.assert_allclose(float(losses.distortion(w, t, d, 1.0)),
                             float(losses.distortion(w, 10 * t, 10 * d, 10.0)),
                             rtol=1e-5)


def test_orientation_penalises_only_normals_facing_away():
  weights = jnp.array([[0.5, 0.5]])
  direction = jnp.array([[0.0, 0.0, 1.0]])  # Camera looks along +z.
  towards = jnp.array([[[0.0, 0.0, -1.0], [0.0, 0.6, -0.8]]])
  away = jnp.array([[[0.0, 0.0, 1.0], [0.0, 0.6, 0.8]]])
  assert float(losses.orientation(weights, towards, direction)) == 0.0
  np.testing.assert_allclose(
      float(losses.orientation(weights, away, direction)),
      0.5 * 1.0 + 0.5 * 0.64, rtol=1e-6)
  # The weights are constants: the loss moves normals only.
  grad_w = jax.grad(losses.orientation)(weights, away, direction)
  assert float(jnp.abs(grad_w).max()) == 0.0


def test_entropy_vanishes_at_empty_and_opaque_and_peaks_at_half():
  values = [float(losses.entropy(jnp.array([o]))) for o in (0.0, 0.5, 1.0)]
  assert values[0] < 1e-3 and values[2] < 1e-3
  np.testing.assert_allclose(values[1], np.log(2.0), rtol=1e-5)


def test_opacity_loss_is_the_mean_of_its_formula():
  rng = np.random.default_rng(2)
  o = rng.random((3, 5, 5))
  np.testing.assert_allclose(float(losses.opacity(jnp.asarray(o))),
                             np.mean(np.sqrt(o ** 2 + 0.01)), rtol=1e-6)
  # Empty pixels cost sqrt(0.01) and pay no gradient; opaque ones are pushed
  # down by o / sqrt(o^2 + 0.01), normalised by the number of pixels.
  np.testing.assert_allclose(float(losses.opacity(jnp.zeros(4))), 0.1,
                             rtol=1e-6)
  grad = jax.grad(losses.opacity)(jnp.array([0.0, 0.5, 1.0, 1.0]))
  np.testing.assert_allclose(
      grad, [0.0, 0.5 / np.sqrt(0.26) / 4, 1 / np.sqrt(1.01) / 4,
             1 / np.sqrt(1.01) / 4], rtol=1e-5)
