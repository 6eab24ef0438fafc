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
  # The step's 256 samples in two chunks (the toy's hash grid takes them
  # in one).
  config.render.field_chunk = 128
  config.render.chunk = 64
  config.nerf.hash_levels = 4
  config.nerf.hash_log2_table_size = 8
  config.nerf.hash_min_resolution = 4
  config.nerf.hash_max_resolution = 16
  config.nerf.hash_mlp_width = 8
  config.nerf.background_width = 8
  # Coarse to fine within the run: 2 levels, then one more at steps 2 and 4.
  config.nerf.hash_start_levels = 2
  config.nerf.hash_level_start_step = 2
  config.nerf.hash_level_every_steps = 2
  # Every part of the step runs: lit and textureless views after step 2,
  # with their normals and the orientation loss.
  config.shading.albedo_steps = 2
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
