"""The Janus table (evaluation/janus.py) end to end at a tiny size.

Two methods, two prior settings, one seed of configs/tiny.py (2 steps): the
runs are trained with the settings they name, classified, counted and
printed; a second call reuses them.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from configs import toy_biased
from dreamfusion_jax import errors
from dreamfusion_jax import runs
from dreamfusion_jax.evaluation import janus
from dreamfusion_jax.toy import exact_prior

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config():
  config = tiny.get_config()
  config.num_steps = 2
  config.log.preview_every_steps = 0
  return config


def test_classify():
  assert janus.classify({'front': True, 'back': False}) == 'right'
  assert janus.classify({'front': False, 'back': True}) == 'flipped'
  assert janus.classify({'front': True, 'back': True}) == 'janus'
  assert janus.classify({'front': False, 'back': False}) == 'none'
  # Side noses: a second face turned by 90 degrees.
  side = {'front': False, 'back': False, 'side': True}
  assert janus.classify(side) == 'side'
  assert janus.classify({**side, 'front': True}) == 'janus'
  assert janus.classify({**side, 'back': True}) == 'flipped'
  assert janus.classify({'front': True, 'back': False,
                         'side': False}) == 'right'


def test_run_config_sets_the_method_and_the_bias():
  strong = toy_biased.LEVELS['strong']
  config = janus.run_config(_tiny_config(), 'perp_neg', strong, 3)
  assert config.prompt == 'a snowman' and config.seed == 3
  assert config.guidance.perp_neg and config.guidance.view_prompts
  assert tuple(config.toy.view_frequencies) == strong[0]
  assert config.toy.view_adherence == strong[1]
  config = janus.run_config(_tiny_config(), 'no_views', janus.EXACT, 0)
  assert not config.guidance.view_prompts
  with pytest.raises(errors.UserError, match='perp_neg'):
    janus.run_config(_tiny_config(), 'perpneg', janus.EXACT, 0)


def test_posterior_group_shares_follow_the_likelihood_and_the_weights():
  # Three photographs in groups 0, 1, 2 of G = 4; the query is photograph 1.
  rng = np.random.default_rng(0)
  photos = rng.uniform(-1, 1, (3, 4, 4, 3)).astype(np.float32)
  params = exact_prior.image_set_params(photos, [0, 1, 2],
                                        jnp.linspace(0.9999, 1e-4, 1000))
  query = jnp.asarray(photos[1:2])
  key = jax.random.key(0)
  even = jnp.asarray([1.0, 1.0, 1.0, 0.0])
  # Small noise: the nearest photograph takes everything, at any weights.
  low = janus.posterior_group_shares(params, query, even, 0, 4, key)
  np.testing.assert_allclose(low, [0, 1, 0, 0], atol=1e-4)
  skewed = jnp.asarray([100.0, 1.0, 1.0, 0.0])
  low = janus.posterior_group_shares(params, query, skewed, 0, 4, key)
  np.testing.assert_allclose(low, [0, 1, 0, 0], atol=1e-4)
  # ... unless its group weighs nothing: then the next nearest.
  without = jnp.asarray([1.0, 0.0, 1.0, 0.0])
  low = janus.posterior_group_shares(params, query, without, 0, 4, key)
  assert low[1] == 0.0 and abs(low.sum() - 1.0) < 1e-5
  nearer = int(np.argmin([np.sum((photos[i] - photos[1])**2) for i in (0, 2)]))
  assert low[2 * nearer] > 0.99
  # Pure noise: the image says nothing, the shares are the weights.
  high = janus.posterior_group_shares(params, query, skewed, 999, 64, key)
  np.testing.assert_allclose(high, np.asarray(skewed) / 102.0, atol=0.02)


def test_table_end_to_end(tmp_path):
  settings = {'exact': janus.EXACT, 'strong': toy_biased.LEVELS['strong']}
  methods = ['no_views', 'paper', 'perp_neg']
  results = janus.janus_evaluate(_tiny_config(), tmp_path, settings, methods,
                                 seeds=[0])
  assert len(results['runs']) == 6
  for run in results['runs']:
    workdir = tmp_path / run['setting'] / run['method'] / 'seed_0'
    config = runs.load_config(str(workdir))
    assert config.guidance.perp_neg == (run['method'] == 'perp_neg')
    assert config.guidance.view_prompts == (run['method'] != 'no_views')
    assert config.toy.view_adherence == settings[run['setting']][1]
    assert run['outcome'] == janus.classify(run['janus'])
    # Settings and view prompts change only the embeddings: one batch per
    # guidance program, no_views and paper together.
    assert run['batch_objects'] == (2 if run['method'] == 'perp_neg' else 4)
  for name in settings:
    for method in methods:
      assert sum(results['counts'][name][method].values()) == 1
  assert [(r['setting'], r['method']) for r in results['runs']] == [
      (name, method) for name in settings for method in methods]
  table = janus.format_janus_table(results)
  assert '| Perp-Neg |' in table and '| view prompts (paper) |' in table
  assert 'Wall time' in table
  with open(tmp_path / janus.JANUS_RESULTS) as f:
    assert json.load(f)['counts'] == results['counts']
  # Complete runs are reused, not trained again.
  again = janus.janus_evaluate(_tiny_config(), tmp_path, settings, methods,
                               seeds=[0])
  assert again['counts'] == results['counts']
  assert again['wall_seconds'] < results['wall_seconds']


@pytest.mark.slow
def test_evaluate_py_janus_mode(tmp_path):
  """The command line of the Janus table (slow: about 40 s of the suite's
  CPU time; test_table_end_to_end runs the same janus_evaluate in process)."""
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'evaluate.py'),
       '--mode=janus', f'--root={tmp_path}', '--seeds=0',
       '--methods=negative', '--priors=moderate',
       f"--config={os.path.join(ROOT, 'configs', 'tiny.py')}",
       '--config.num_steps=2', '--config.log.preview_every_steps=0'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| + negative view prompts |' in proc.stdout
  assert (tmp_path / 'moderate' / 'negative' / 'seed_0').is_dir()
