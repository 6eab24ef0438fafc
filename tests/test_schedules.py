"""Annealed quantities as functions of the step."""

import numpy as np

from configs import default
from dreamfusion_jax import schedules


def test_t_max_is_constant_unless_an_end_is_set():
  g = default.get_config().guidance
  assert g.t_max_end is None
  values = [float(schedules.t_max(s, g, 100)) for s in (0, 50, 99)]
  np.testing.assert_allclose(values, g.t_max, rtol=1e-6)


def test_t_max_falls_linearly_from_start_to_end():
  g = default.get_config().guidance
  g.t_max, g.t_max_end = 0.9, 0.3
  steps = np.arange(0, 101)
  values = np.array([float(schedules.t_max(s, g, 101)) for s in steps])
  np.testing.assert_allclose(values[[0, 50, 100]], [0.9, 0.6, 0.3], atol=1e-6)
  np.testing.assert_allclose(np.diff(values), -0.006, atol=1e-6)
  # A resumed or extended run past the last step holds the end value.
  assert abs(float(schedules.t_max(150, g, 101)) - 0.3) < 1e-6


def test_distortion_weight_is_off_then_ramps_to_its_full_value():
  c = default.get_config().loss
  c.distortion_weight = 100.0
  weight = lambda s: float(schedules.distortion_weight(s, c, 1000))
  assert [weight(s) for s in (0, 999)] == [100.0, 100.0]  # (0, 0): constant.
  c.distortion_ramp = (0.4, 0.8)
  np.testing.assert_allclose([weight(s) for s in (0, 399, 400, 600, 800, 999)],
                             [0.0, 0.0, 0.0, 50.0, 100.0, 100.0], atol=1e-4)
  c.distortion_ramp = (0.5, 0.5)
  assert [weight(s) for s in (499, 500)] == [0.0, 100.0]


def test_learning_rate_warms_up_linearly_then_follows_a_cosine():
  c = default.get_config().optim
  c.init_learning_rate, c.learning_rate, c.final_learning_rate = (
      1e-6, 1e-3, 1e-5)
  c.warmup_steps = 100
  num_steps = 1100
  lr = schedules.learning_rate(c, num_steps)
  warm = np.arange(0, 101)
  np.testing.assert_allclose(
      [float(lr(s)) for s in warm], 1e-6 + (1e-3 - 1e-6) * warm / 100,
      rtol=1e-5)
  # After the warm-up: half a cosine period from the peak to the final rate,
  # reached at the last step and kept after it.
  decay = np.array([100, 250, 600, 850, 1000, 1100, 1500])
  phase = np.minimum((decay - 100) / 1000, 1.0)
  want = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1.0 + np.cos(np.pi * phase))
  np.testing.assert_allclose([float(lr(s)) for s in decay], want, rtol=1e-5)
  np.testing.assert_allclose(float(lr(600)), (1e-3 + 1e-5) / 2, rtol=1e-5)


def test_learning_rate_without_warm_up_is_the_same_cosine():
  c = default.get_config().optim
  c.learning_rate, c.final_learning_rate, c.warmup_steps = 1e-2, 1e-3, 0
  lr = schedules.learning_rate(c, 1000)
  steps = np.array([0, 250, 500, 1000, 1200])
  phase = np.minimum(steps / 1000, 1.0)
  want = 1e-3 + (1e-2 - 1e-3) * 0.5 * (1.0 + np.cos(np.pi * phase))
  np.testing.assert_allclose([float(lr(s)) for s in steps], want, rtol=1e-5)


def test_learning_rate_peaks_before_the_end_of_a_short_run():
  c = default.get_config().optim
  c.warmup_steps = 500
  lr = schedules.learning_rate(c, 50)  # Shorter than the warm-up.
  np.testing.assert_allclose(float(lr(49)), c.learning_rate, rtol=1e-5)
  # float32: the warm-up's start is exact to about 1e-7 of the peak.
  np.testing.assert_allclose(float(lr(0)), c.init_learning_rate,
                             atol=1e-6 * c.learning_rate)


def test_orientation_weight_ramps_geometrically_then_holds():
  c = default.get_config().loss
  c.orientation_weight_start, c.orientation_weight_end = 1e-4, 1e-2
  c.orientation_ramp_fraction = 0.25
  weight = lambda s: float(schedules.orientation_weight(s, c, 4000))
  # Ramp over the first 1000 steps, linear in log10: -4 -> -2.
  steps = np.array([0, 250, 500, 750, 1000, 2000, 3999])
  want = 10.0 ** (-4.0 + 2.0 * np.minimum(steps / 1000, 1.0))
  np.testing.assert_allclose([weight(s) for s in steps], want, rtol=1e-4)
  # An end weight of 0 turns the loss off throughout, whatever the start.
  c.orientation_weight_end = 0.0
  assert [weight(s) for s in (0, 500, 3999)] == [0.0, 0.0, 0.0]
