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
