"""Runs a few train steps of configs/tiny.py in a fresh process.

Device count and multi-process settings must be fixed before JAX starts, so
the parallelism tests run this script as a subprocess:

  python tests/train_worker.py OUT.npz DEVICES BATCH STEPS \
      [PROCESS_ID NUM_PROCESSES PORT]

The learning rate starts at its peak (no warm-up), so every step moves the
parameters. It writes (process 0 only) to OUT.npz the initial and final
parameters (flattened) and every step's metrics, stacked: 'train_loss',
'train_grad_norm', ... of shape [STEPS].
"""

import os
import sys


def main(out, devices, batch, steps, process_id=None, num_processes=None,
         port=None):
  os.environ['XLA_FLAGS'] = (
      f'--xla_force_host_platform_device_count={devices}')
  import jax  # pylint: disable=g-import-not-at-top
  if num_processes is not None:
    jax.distributed.initialize(coordinator_address=f'localhost:{port}',
                               num_processes=int(num_processes),
                               process_id=int(process_id))
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.flatten_util import ravel_pytree  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from dreamfusion_jax import priors  # pylint: disable=g-import-not-at-top
  from dreamfusion_jax import train_step  # pylint: disable=g-import-not-at-top
  from dreamfusion_jax.nerf import field  # pylint: disable=g-import-not-at-top

  config = tiny.get_config()
  config.batch_per_device = int(batch)
  config.optim.warmup_steps = 0
  mesh = train_step.make_mesh()
  model = field.make_model(config)
  tx = train_step.make_optimizer(config)
  prior = train_step.replicate(priors.load_prior(config), mesh)
  state, base_key = train_step.initial_state(config.seed, model, tx, mesh)
  params0 = ravel_pytree(jax.device_get(state.params))[0]
  step_fn = train_step.make_train_step(config, model, tx, mesh)
  history = []
  for _ in range(int(steps)):
    state, metrics = step_fn(state, prior, base_key)
    history.append(jax.device_get(metrics))
  flat = ravel_pytree(jax.device_get(state.params))[0]
  if jax.process_index() == 0:
    np.savez(out, params=np.asarray(flat), params0=np.asarray(params0),
             devices=jax.device_count(),
             **{k.replace('/', '_'): np.asarray([m[k] for m in history])
                for k in history[0]})


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  main(*sys.argv[1:])
