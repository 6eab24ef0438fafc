r"""Throughput of training many objects at once, by objects per device P.

  python experiments/benchmark_objects.py [--config=configs/toy.py] \
      [--objects=1,2,4,8,15] [--steps=5] [--out=/tmp/objects.json]
  python experiments/benchmark_objects.py --sd [--sd_objects=1,4,16]

For each P a fresh process (so that its memory peak is its own) builds
P x devices objects, the config's single runs with seeds 0, 1, ... (one
prompt), stacks and shards their train states and their batched prior as
`train_objects.train_objects` does, compiles the object step
(`train_step.make_object_train_step`) and times --steps steps after one
warm-up step, each waited for. It reports per P:

  compile s     lowering + compiling the step;
  steps/s       steps of the whole batch per second;
  obj-steps/s   objects x steps/s;
  speed-up      obj-steps/s over that of the first P listed (P = 1);
  peak MiB      the device's peak_bytes_in_use, else the process's peak
                RSS (host memory: the prior and the compiler included);
  GFLOP/step    XLA's cost analysis of one device's compiled step. It
                counts a loop's body once (lax.map over field chunks) and
                the occupancy update, which runs every
                render.occupancy_update_every steps, in every step; the
                JSON's `loops` says whether the step has loops;
  TFLOP/s       GFLOP/step x steps/s, and its fraction of the device's dense
                half-precision peak (none for a CPU or an unlisted device);
  cores         the process's CPU seconds per second while timing: how many
                host cores the step keeps busy (on a CPU backend, where
                batching can only help if one object leaves cores idle).

The JSON (--out) also holds one object's train-state bytes, the prior's
bytes (all objects) and the fraction of objects whose last update was
finite.

--sd replaces the config's prior with the full-size Stable Diffusion v1.5
UNet and VAE encoder (random weights, random text embeddings per object;
nothing is downloaded) and, unless --config names another, takes the recipe
of configs/dreamfusion_sd.py. On a CPU one UNet forward takes about a
minute, so there --sd runs --dry: sizes from jax.eval_shape (parameters,
one object's train state, the prior per device) and the FLOPs of the
lowered, uncompiled step; nothing is allocated or timed.
"""

import json
import os
import sys

# Config files import `configs.default` from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from dreamfusion_jax import errors
from dreamfusion_jax import launch

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(ROOT, 'configs', 'toy.py'),
    'Path to a config file (configs/*.py).', lock_config=True)
_OBJECTS = flags.DEFINE_list('objects', ['1', '2', '4', '8', '15'],
                             'Objects per device to time, each in a process.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps after a warm-up.')
_SD = flags.DEFINE_bool(
    'sd', False, 'Full-size Stable Diffusion v1.5, random weights.')
_SD_OBJECTS = flags.DEFINE_list('sd_objects', ['1', '4', '16'],
                                'Objects per device with --sd.')
_DRY = flags.DEFINE_bool(
    'dry', False, 'Sizes and FLOPs only, nothing run (--sd on a CPU: always).')
_SUBPROCESS = flags.DEFINE_bool(
    'subprocess', True, 'Each P in a fresh process; else all in this one '
    '(faster; a memory peak then includes the P before it).')
_OUT = flags.DEFINE_string('out', None, 'JSON file of the results.')
_PROFILE = flags.DEFINE_integer(
    'profile', 0, 'Also trace 2 steps and report the N ops (XLA fusions, '
    'named by the JAX op they come from) that take the most time.')
_WORKER = flags.DEFINE_integer(
    'worker', 0, 'Internal: time this many objects per device here.')


# Dense (no sparsity) bf16/fp16 peak FLOP/s of one chip, as the vendors
# publish them: NVIDIA's H100/H200 (SXM), A100 and L4 datasheets, Google
# Cloud's TPU v4, v5e, v5p and v6e pages. First matching name wins.
PEAK_FLOPS = (
    ('H100 PCIe', 756e12), ('H100', 989e12), ('H200', 989e12),
    ('A100', 312e12), ('L4', 121e12), ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12), ('TPU v5e', 197e12), ('TPU v5', 459e12),
    ('TPU v6 lite', 918e12), ('TPU v6e', 918e12),
)


def peak_flops(device_kind: str):
  """Dense half-precision FLOP/s of a device kind; None when unlisted."""
  for name, flops in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None


def _peak_memory():
  """(bytes, what): the device's peak use, else the process's peak RSS."""
  import resource  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'], 'device peak_bytes_in_use'
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'host RSS'


def _flops(stage) -> float:
  """FLOPs of a lowered or compiled step, from XLA's cost analysis."""
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # One dict per program (older JAX).
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', 0.0))


def _sd_prior(config, num_objects: int, mesh):
  """The full-size Stable Diffusion v1.5 prior for `num_objects` objects,
  random weights drawn on the devices, and its vmap axes.

  Returns:
    (prior, axes, counts): a prior whose `prior.EMBEDDINGS`
    have a leading object axis ([O, 4, 77, 768], [O, 77, 768]), its axes
    (`priors.object_axes`), and the parameter counts {'unet': ...,
    'vae_encoder': ..., 'dtype': the compute dtype's name}.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  import jax.numpy as jnp
  import numpy as np
  from dreamfusion_jax import priors
  from dreamfusion_jax.guidance import prior as prior_lib
  from dreamfusion_jax.guidance import stable_diffusion
  from experiments import benchmark_guidance
  import diffusers
  # pylint: enable=g-import-not-at-top
  sd15 = benchmark_guidance.SD15
  dtype = stable_diffusion.resolve_dtype(config.guidance.dtype)
  unet = diffusers.FlaxUNet2DConditionModel(dtype=dtype, **sd15['unet'])
  vae = diffusers.FlaxAutoencoderKL(dtype=dtype, **sd15['vae'])
  unet_shapes = jax.eval_shape(unet.init_weights, jax.random.PRNGKey(0))
  vae_shapes = jax.eval_shape(vae.init_weights, jax.random.PRNGKey(0))
  # Only the encoder is kept (make_prior drops the decoder).
  vae_shapes = {k: vae_shapes[k] for k in ('encoder', 'quant_conv')}
  counts = {name: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
            for name, shapes in (('unet', unet_shapes),
                                 ('vae_encoder', vae_shapes))}
  counts['dtype'] = jnp.dtype(dtype).name

  def draw(shapes, seed):
    # N(0, 1/fan_in) as benchmark_guidance._random, but drawn on the
    # devices: numpy takes tens of seconds for the UNet's 860M weights.
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    # A Python float keeps the weights in `dtype`.
    return tree.unflatten([
        jax.random.normal(k, x.shape, dtype) /
        float(np.sqrt(max(np.prod(x.shape[:-1]), 1)))
        for k, x in zip(keys, leaves)])

  replicated = NamedSharding(mesh, P())
  unet_params = jax.jit(lambda: draw(unet_shapes, 0),
                        out_shardings=replicated)()
  vae_params = jax.jit(lambda: draw(vae_shapes, 1), out_shardings=replicated)()
  tokens, width = sd15['text']
  views = jax.random.normal(jax.random.key(2),
                            (num_objects, 4, tokens, width))
  negative = (jax.random.normal(jax.random.key(4), views.shape)
              if config.guidance.negative_view_prompts else None)
  prior = stable_diffusion.make_prior(
      unet, unet_params, vae, vae_params, view_embeddings=views,
      uncond_embedding=jax.random.normal(jax.random.key(3),
                                         (num_objects, tokens, width)),
      schedule=stable_diffusion.alphas_cumprod(benchmark_guidance.SCHEDULE),
      dtype=dtype, negative_view_embeddings=negative)
  return prior, priors.object_axes(prior, prior_lib.EMBEDDINGS), counts


def top_ops(compiled, run, num: int, steps: int = 2):
  """The `num` ops of `compiled` that take most time over `steps` calls of
  `run()`: [(ms per step, op, the JAX op it comes from)], from a profiler
  trace (XLA's executors name each fused op in it)."""
  # pylint: disable=g-import-not-at-top
  import collections
  import glob
  import gzip
  import re
  import tempfile
  import jax
  # pylint: enable=g-import-not-at-top
  origin = dict(re.findall(r'%([\w.-]+) = [^\n]*?op_name="([^"]+)"',
                           compiled.as_text()))
  with tempfile.TemporaryDirectory() as folder:
    jax.profiler.start_trace(folder)
    for _ in range(steps):
      jax.block_until_ready(run())
    jax.profiler.stop_trace()
    (path,) = glob.glob(f'{folder}/**/*.trace.json.gz', recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)['traceEvents']
  total = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e['name'] in origin:
      total[e['name']] += e.get('dur', 0)
  return [(us / 1e3 / steps, name, origin[name])
          for name, us in total.most_common(num)]


def measure(config, per_device: int, steps: int, sd: bool = False,
            dry: bool = False, profile: int = 0) -> dict:
  """Compiles and times the step of `per_device` objects per device.

  Args:
    config: a single-run config; the objects are it with seeds 0, 1, ...
    per_device: objects per device P.
    steps: timed steps after one warm-up step.
    sd: the full-size Stable Diffusion prior with random weights instead of
      the config's.
    dry: build everything abstractly (jax.eval_shape) and lower the step;
      compile and run nothing.

  Returns:
    One row of results (the module docstring says what each means).
  """
  # pylint: disable=g-import-not-at-top
  import time
  import jax
  import numpy as np
  from dreamfusion_jax import object_batch
  from dreamfusion_jax import priors
  from dreamfusion_jax import train_objects
  from dreamfusion_jax import train_step
  from dreamfusion_jax.nerf import field
  # pylint: enable=g-import-not-at-top
  mesh = train_step.make_mesh()
  devices = mesh.devices.size
  num = per_device * devices
  configs = [object_batch.single_config(config, config.prompt, seed)
             for seed in range(num)]
  model = field.make_model(config)
  tx = train_step.make_optimizer(config)
  grid = train_step.grid_resolution(config)
  static = {'params': None}  # What build() finds out besides arrays.

  def build():
    if sd:
      prior, static['axes'], static['params'] = _sd_prior(config, num, mesh)
    else:
      prior, static['axes'] = priors.load_object_prior(configs)
    states, keys = zip(*train_step.initial_states(
        [c.seed for c in configs], model, tx, mesh, grid))
    stack = train_objects.stack
    return (train_objects.shard_objects(prior, mesh, static['axes']),
            train_objects.shard_objects(stack(states), mesh),
            train_objects.shard_objects(stack(keys), mesh))

  prior, states, keys = jax.eval_shape(build) if dry else build()
  axes = static['axes']
  step_fn = train_step.make_object_train_step(config, model, tx, mesh, axes)
  device = jax.devices()[0]
  nbytes = train_objects.nbytes
  row = {
      'objects_per_device': per_device, 'objects': num, 'devices': devices,
      'platform': device.platform, 'device_kind': device.device_kind,
      'dry': dry, 'params': static['params'],
      'state_bytes': nbytes(states) // num, 'prior_bytes': nbytes(prior),
  }
  t0 = time.perf_counter()
  lowered = step_fn.lower(states, prior, keys)
  if dry:
    return {**row, 'flops': _flops(lowered),
            'loops': ' while(' in lowered.as_text(dialect='hlo')}
  compiled = lowered.compile()
  row['compile_s'] = time.perf_counter() - t0
  row['flops'] = _flops(compiled)
  row['loops'] = ' while(' in compiled.as_text()
  states, metrics = compiled(states, prior, keys)  # Warm-up.
  jax.block_until_ready(states)
  t0, cpu0 = time.perf_counter(), time.process_time()
  for _ in range(steps):
    states, metrics = compiled(states, prior, keys)
  jax.block_until_ready((states, metrics))
  wall = time.perf_counter() - t0
  step_s = wall / steps
  # CPU seconds of all the process's threads per second: how many cores
  # the step keeps busy (a CPU backend's only parallelism).
  cores_busy = (time.process_time() - cpu0) / wall
  peak, peak_kind = _peak_memory()
  device_peak = peak_flops(device.device_kind)
  if profile:
    box = [states]

    def run():
      box[0], out = compiled(box[0], prior, keys)
      return out
    row['top_ops'] = top_ops(compiled, run, profile)
    states = box[0]
  return {
      **row, 'step_s': step_s, 'steps_per_s': 1.0 / step_s,
      'cores_busy': cores_busy,
      'object_steps_per_s': num / step_s,
      'peak_bytes': int(peak), 'peak_kind': peak_kind,
      'flops_per_s': row['flops'] / step_s, 'peak_flops': device_peak,
      'peak_fraction': (row['flops'] / step_s / device_peak
                        if device_peak else None),
      'finite': float(np.mean(jax.device_get(metrics['train/finite']))),
  }


def add_speedup(rows):
  """Adds each row's obj-steps/s over the first timed row's (P = 1)."""
  timed = [r for r in rows if r.get('object_steps_per_s')]
  for row in timed:
    row['speedup'] = (row['object_steps_per_s'] /
                      timed[0]['object_steps_per_s'])
  return rows


def _run_worker(per_device: int) -> dict:
  """Runs this script with --worker=P in a fresh process."""
  args = [a for a in sys.argv[1:]
          if not a.startswith(('--objects', '--sd_objects', '--out'))]
  result, failure = launch.run_worker(__file__,
                                      [*args, f'--worker={per_device}'])
  if result is None:
    return {'objects_per_device': per_device, 'error': failure}
  return result


def format_results(rows) -> str:
  """A plain-text table of the rows."""
  def opt(x, fmt):  # '-' where nothing was measured.
    width = fmt.split('.')[0]
    return format('-', '>' + width) if x is None else format(x, fmt)
  lines = [f"{'P':>4}{'objects':>8}{'compile s':>10}{'steps/s':>9}"
           f"{'obj-steps/s':>12}{'speed-up':>9}{'peak MiB':>10}"
           f"{'GFLOP/step':>11}{'TFLOP/s':>9}{'% peak':>8}{'cores':>6}"]
  for r in rows:
    if 'error' in r:
      lines.append(f"{r['objects_per_device']:>4}  failed: {r['error']}")
      continue
    peak = r.get('peak_bytes')
    fraction = r.get('peak_fraction')
    lines.append(
        f"{r['objects_per_device']:>4}{r['objects']:>8}"
        f"{opt(r.get('compile_s'), '10.1f')}"
        f"{opt(r.get('steps_per_s'), '9.2f')}"
        f"{opt(r.get('object_steps_per_s'), '12.2f')}"
        f"{opt(r.get('speedup'), '9.2f')}"
        f"{opt(peak and peak / 2**20, '10.0f')}{r['flops'] / 1e9:11.2f}"
        f"{opt(r.get('flops_per_s') and r['flops_per_s'] / 1e12, '9.3f')}"
        f"{opt(fraction and 100 * fraction, '8.2f')}"
        f"{opt(r.get('cores_busy'), '6.2f')}")
  ok = [r for r in rows if 'error' not in r]
  if ok:
    r = ok[0]
    lines.append(
        f"{r['devices']} x {r['device_kind']} ({r['platform']}); FLOPs per "
        f"device{', loops counted once' if r['loops'] else ''}; peak "
        f"memory: {r.get('peak_kind', 'not run (dry)')}; % of the dense "
        f"half-precision peak"
        f"{'' if peak_flops(r['device_kind']) else ' (unknown here: -)'}.")
    if r['params']:
      lines.append(
          f"Stable Diffusion v1.5: UNet {r['params']['unet'] / 1e6:.0f}M, "
          f"VAE encoder {r['params']['vae_encoder'] / 1e6:.0f}M params in "
          f"{r['params']['dtype']}; prior {r['prior_bytes'] / 2**20:.0f} MiB "
          f"(P = {r['objects_per_device']}), one object's train state "
          f"{r['state_bytes'] / 2**20:.0f} MiB.")
  return '\n'.join(lines)


def _config():
  """--config, or with --sd and no --config the Stable Diffusion recipe."""
  if _SD.value and not flags.FLAGS['config'].present:
    from configs import dreamfusion_sd  # pylint: disable=g-import-not-at-top
    return dreamfusion_sd.get_config()
  return _CONFIG.value


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  dry = _DRY.value or (_SD.value and jax.default_backend() == 'cpu')
  if _WORKER.value:
    result = measure(_config(), _WORKER.value, _STEPS.value, sd=_SD.value,
                     profile=_PROFILE.value)
    launch.print_worker_result(result)
    return
  if _STEPS.value < 1:
    raise errors.UserError(f'--steps={_STEPS.value}; time at least 1 step.')
  rows = []
  for p in _SD_OBJECTS.value if _SD.value else _OBJECTS.value:
    if dry:
      rows.append(measure(_config(), int(p), 0, sd=_SD.value, dry=True))
    elif _SUBPROCESS.value:
      rows.append(_run_worker(int(p)))
    else:
      rows.append(measure(_config(), int(p), _STEPS.value, sd=_SD.value,
                          profile=_PROFILE.value))
      rows[-1]['peak_kind'] += ' (of the process: the P before included)'
    add_speedup(rows)
    row = rows[-1]
    print(f'P = {p}: ' + (row.get('error') or (
        f"{row['flops'] / 1e9:.1f} GFLOP/step" if dry else
        f"{row['object_steps_per_s']:.2f} object-steps/s")), flush=True)
    if _OUT.value:  # After every P: a run cut short keeps what it measured.
      os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
      with open(_OUT.value, 'w', encoding='utf-8') as f:
        json.dump(rows, f, indent=1)
  print(format_results(rows))
  for row in rows:
    for ms, name, origin in row.get('top_ops', ()):
      print(f"P = {row['objects_per_device']}: {ms:8.1f} ms/step  {name}  "
            f'({origin})')


if __name__ == '__main__':
  launch.run(main)
