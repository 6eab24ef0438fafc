"""A seconds-long smoke test of the whole pipeline on the toy world.

Tiny renders, a tiny field and a tiny prior: it checks that training,
checkpoints, logs and exports run end to end, not that a good object comes
out (use configs/toy.py for that).

  python experiments/train.py --config=configs/tiny.py --workdir=/tmp/tiny
"""

import ml_collections

from configs import toy


def get_config() -> ml_collections.ConfigDict:
  config = toy.get_config()
  config.num_steps = 6
  config.render.resolution = 8
  config.render.num_samples = 8
  config.render.occupancy_samples = 4
  config.render.occupancy_resolution = 8
  config.render.field_chunk = 128  # The step's 256 samples in two chunks.
  config.render.chunk = 64
  config.nerf.mlp_width = 16
  config.nerf.mlp_blocks = 1
  config.nerf.num_frequencies = 2
  # Every part of the step runs: lit and textureless views after step 2,
  # with their normals and the orientation loss (the toy default has none).
  config.shading.albedo_steps = 2
  config.shading.lit_prob = 0.75
  config.loss.orientation_weight_start = 1e-4
  config.loss.orientation_weight_end = 1e-2
  config.toy.images_per_view = 4
  config.toy.supersample = 1
  config.optim.warmup_steps = 2
  config.optim.eps = 1e-8
  config.log.every_steps = 2
  config.log.preview_every_steps = 3
  config.log.preview_resolution = 8
  config.checkpoint.every_steps = 2
  config.checkpoint.keep = 10
  config.export.num_frames = 4
  config.export.resolution = 16
  config.export.mesh_resolution = 16
  config.export.gif_size = 16
  return config
