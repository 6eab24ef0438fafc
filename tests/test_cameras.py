"""Camera sampling statistics, conventions and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from dreamfusion_jax import cameras
from dreamfusion_jax import errors


@pytest.fixture(scope='module')
def draws():
  config = default.get_config()
  return config.camera, cameras.sample_cameras(
      jax.random.key(0), config.camera, 100_000)


def test_samples_stay_in_configured_ranges(draws):
  c, cams = draws
  assert c.elevation_range[0] <= float(cams.elevation.min())
  assert float(cams.elevation.max()) <= c.elevation_range[1]
  assert 0.0 <= float(cams.azimuth.min()) and float(cams.azimuth.max()) < 360.0
  assert c.focal_range[0] <= float(cams.focal.min())
  assert float(cams.focal.max()) <= c.focal_range[1]
  nominal = jnp.linalg.norm(cams.position, axis=-1)
  # Jitter moves the camera by at most 0.1 * sqrt(3).
  slack = c.position_jitter * np.sqrt(3) + 1e-5
  assert float(nominal.min()) >= c.distance_range[0] - slack
  assert float(nominal.max()) <= c.distance_range[1] + slack
  light = jnp.linalg.norm(cams.light_position, axis=-1)
  np.testing.assert_allclose(
      [light.min(), light.max()], c.light_distance_range, atol=1e-3)


def test_elevation_is_half_uniform_in_angle_half_in_area(draws):
  """The density of the 50/50 mix is the average of the two densities."""
  c, cams = draws
  lo, hi = np.deg2rad(c.elevation_range)
  el = np.deg2rad(np.asarray(cams.elevation))
  edges = np.linspace(lo, hi, 11)
  counts, _ = np.histogram(el, edges)
  angle = np.diff(edges) / (hi - lo)
  area = np.diff(np.sin(edges)) / (np.sin(hi) - np.sin(lo))
  expected = len(el) * (0.5 * angle + 0.5 * area)
  # 5 standard deviations of a binomial count.
  np.testing.assert_array_less(np.abs(counts - expected),
                               5 * np.sqrt(expected) + 1)
  # A pure uniform-in-angle sampler would fail the same check.
  assert np.max(np.abs(len(el) * angle - expected) / np.sqrt(expected)) > 5


def test_azimuth_and_focal_are_uniform(draws):
  _, cams = draws
  counts, _ = np.histogram(np.asarray(cams.azimuth), np.linspace(0, 360, 9))
  np.testing.assert_allclose(counts / counts.sum(), 1 / 8, atol=0.01)
  assert abs(float(cams.focal.mean()) - (0.7 + 1.35) / 2) < 0.01


def test_cameras_look_at_the_jittered_target(draws):
  _, cams = draws
  rot = np.asarray(cams.rotation[:1000])
  np.testing.assert_allclose(rot.transpose(0, 2, 1) @ rot,
                             np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
  np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
  # The viewing direction (-back) points roughly at the origin.
  forward = -rot[:, :, 2]
  to_origin = -np.asarray(cams.position[:1000])
  to_origin /= np.linalg.norm(to_origin, axis=-1, keepdims=True)
  assert np.mean(np.sum(forward * to_origin, -1)) > 0.95


def test_azimuth_zero_elevation_zero_sits_on_plus_x():
  cam = cameras.fixed_cameras(jnp.array([0.0, 90.0]), jnp.array([0.0, 0.0]),
                              jnp.array([1.5, 1.5]), jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(cam.position[0], [1.5, 0, 0], atol=1e-6)
  np.testing.assert_allclose(cam.position[1], [0, 1.5, 0], atol=1e-6)
  # Camera at +x looking at the origin: +y is to the right, +z is up.
  np.testing.assert_allclose(cam.rotation[0][:, 0], [0, 1, 0], atol=1e-6)
  np.testing.assert_allclose(cam.rotation[0][:, 1], [0, 0, 1], atol=1e-6)
  uv = cameras.project(cam, jnp.zeros((2, 1, 3)), 64)
  np.testing.assert_allclose(uv, 32.0, atol=1e-4)


def test_image_rows_run_down_and_columns_run_right():
  """Row 0 is the top of the image (world +z) and column 0 its left.

  On +x looking at the origin the camera's right is +y (azimuth grows
  towards it); on +y it is -x. Flipping an image axis in both
  generate_rays and project keeps them inverse, so only this catches it.
  """
  cams = cameras.fixed_cameras(jnp.array([0.0, 90.0]), jnp.array([0.0, 0.0]),
                               jnp.array([2.0, 2.0]), jnp.array([1.0, 1.0]))
  _, dirs = cameras.generate_rays(cams, 8)
  dirs = np.asarray(dirs)  # [camera, row, column, xyz]
  assert np.all(dirs[:, 0, :, 2] > 0.1) and np.all(dirs[:, -1, :, 2] < -0.1)
  np.testing.assert_array_less(np.diff(dirs[:, :, :, 2], axis=1), 0.0)
  assert np.all(dirs[0, :, 0, 1] < -0.1) and np.all(dirs[0, :, -1, 1] > 0.1)
  assert np.all(dirs[1, :, 0, 0] > 0.1) and np.all(dirs[1, :, -1, 0] < -0.1)
  # Points above the origin and on the camera's right land in the top and
  # right halves of the image.
  points = jnp.array([[[0.0, 0.0, 0.5], [0.0, 0.5, 0.0]],
                      [[0.0, 0.0, 0.5], [-0.5, 0.0, 0.0]]])
  uv = np.asarray(cameras.project(cams, points, 8))  # (u right, v down)
  np.testing.assert_allclose(uv[:, 0, 0], 4.0, atol=1e-4)
  assert np.all(uv[:, 0, 1] < 3.0)  # Up: towards row 0.
  assert np.all(uv[:, 1, 0] > 5.0)  # Right: towards column W - 1.
  np.testing.assert_allclose(uv[:, 1, 1], 4.0, atol=1e-4)


def test_rays_and_projection_are_inverse():
  cams = cameras.sample_cameras(jax.random.key(3),
                                default.get_config().camera, 3)
  origins, dirs = cameras.generate_rays(cams, 16)
  np.testing.assert_allclose(jnp.linalg.norm(dirs, axis=-1), 1.0, atol=1e-6)
  points = (origins + 0.7 * dirs).reshape(3, -1, 3)
  uv = cameras.project(cams, points, 16).reshape(3, 16, 16, 2)
  j, i = np.meshgrid(np.arange(16), np.arange(16))
  np.testing.assert_allclose(uv[..., 0], np.broadcast_to(j + 0.5, (3, 16, 16)),
                             atol=1e-3)
  np.testing.assert_allclose(uv[..., 1], np.broadcast_to(i + 0.5, (3, 16, 16)),
                             atol=1e-3)


def test_overhead_camera_is_well_defined():
  cam = cameras.fixed_cameras(jnp.array([30.0]), jnp.array([90.0]),
                              jnp.array([1.2]), jnp.array([1.0]))
  assert bool(jnp.isfinite(cam.rotation).all())
  np.testing.assert_allclose(cam.rotation[0][:, 2], [0, 0, 1], atol=1e-5)


def test_orbit_is_evenly_spaced():
  cam = cameras.orbit_cameras(8, 30.0, 1.3, 1.0)
  np.testing.assert_allclose(cam.azimuth, np.arange(8) * 45.0, atol=1e-4)
  np.testing.assert_allclose(cam.elevation, 30.0)
  uv = cameras.project(cam, jnp.zeros((8, 1, 3)), 32)
  np.testing.assert_allclose(uv, 16.0, atol=1e-3)


def test_a_range_with_min_equal_to_max_is_a_fixed_value():
  config = default.get_config()
  config.camera.distance_range = (1.9, 1.9)
  config.camera.focal_range = (1.0, 1.0)
  config.camera.position_jitter = 0.0
  cameras.validate(config.camera)
  cams = cameras.sample_cameras(jax.random.key(1), config.camera, 64)
  np.testing.assert_allclose(jnp.linalg.norm(cams.position, axis=-1), 1.9,
                             rtol=1e-6)
  np.testing.assert_allclose(cams.focal, 1.0)


@pytest.mark.parametrize('field,value,match', [
    ('elevation_range', (10.0, 5.0), 'elevation_range'),
    ('distance_range', (2.0, 1.0), 'distance_range'),
    ('focal_range', (-1.0, 1.0), 'focal_range'),
    ('uniform_area_prob', 1.5, 'uniform_area_prob'),
])
def test_invalid_ranges_are_refused(field, value, match):
  config = default.get_config()
  config.camera[field] = value
  with pytest.raises(errors.UserError, match=match):
    cameras.validate(config.camera)
