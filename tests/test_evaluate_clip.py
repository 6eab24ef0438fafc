"""CLIP R-Precision: retrieval logic, protocol, and the tiny-CLIP pipeline.

A tiny random FlaxCLIPModel and a byte-level tokenizer with no merges are
saved to a temporary folder and loaded through the real loader; nothing is
downloaded.
"""

import json

from flax import traverse_util
import jax
import numpy as np
import pytest
import safetensors.numpy
import transformers

from dreamfusion_jax import errors
from dreamfusion_jax import files
from dreamfusion_jax.evaluation import clip_model
from dreamfusion_jax.evaluation import clip_r_precision

IMAGE_SIZE = 32


def _write_tokenizer(folder):
  """A CLIP tokenizer over single bytes: vocab.json, merges.txt (no merges)."""
  byte_chars = list(transformers.models.clip.tokenization_clip
                    .bytes_to_unicode().values())
  tokens = byte_chars + [c + '</w>' for c in byte_chars]
  tokens += ['<|startoftext|>', '<|endoftext|>']  # EOS has the highest id.
  (folder / 'vocab.json').write_text(
      json.dumps({t: i for i, t in enumerate(tokens)}))
  (folder / 'merges.txt').write_text('#version: 0.2\n')
  return len(tokens)


def _random_params(shapes):
  """Random weights for a shape tree, made in numpy (no compilation)."""
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'scale':
      return np.ones(leaf.shape, leaf.dtype)
    if name == 'bias':
      return np.zeros(leaf.shape, leaf.dtype)
    return (0.05 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope='module')
def tiny_clip_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp('tiny_clip')
  vocab_size = _write_tokenizer(folder)
  config = transformers.CLIPConfig(
      text_config=dict(
          vocab_size=vocab_size, hidden_size=16, intermediate_size=32,
          num_hidden_layers=1, num_attention_heads=2,
          max_position_embeddings=48, bos_token_id=vocab_size - 2,
          eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
      vision_config=dict(
          hidden_size=16, intermediate_size=32, num_hidden_layers=1,
          num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8),
      projection_dim=16)
  model = transformers.FlaxCLIPModel(config, _do_init=False)
  model.save_pretrained(folder, params=_random_params(model.params_shape_tree))
  (folder / 'preprocessor_config.json').write_text(json.dumps(
      {'image_mean': list(clip_model.OPENAI_CLIP_MEAN),
       'image_std': list(clip_model.OPENAI_CLIP_STD)}))
  return folder


@pytest.fixture(scope='module')
def tiny_clip(tiny_clip_dir):
  return clip_model.load_clip(str(tiny_clip_dir))


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# Retrieval logic on constructed embeddings.


def test_r_precision_is_one_for_matching_embeddings():
  rng = np.random.default_rng(0)
  n, d, views = 20, 32, 4
  text = _unit(rng.normal(size=(n, d)))
  labels = np.repeat(np.arange(n), views)
  images = _unit(text[labels] + 0.1 * rng.normal(size=(n * views, d)))
  assert clip_r_precision.r_precision(images, text, labels) == 1.0
  # A wrong labelling of the same embeddings scores zero.
  assert clip_r_precision.r_precision(images, text, (labels + 1) % n) == 0.0


def test_r_precision_of_random_embeddings_is_one_over_n():
  rng = np.random.default_rng(1)
  n, d, m, trials = 10, 16, 1000, 20
  scores = []
  for _ in range(trials):
    text = _unit(rng.normal(size=(n, d)))
    images = _unit(rng.normal(size=(m, d)))
    labels = rng.integers(0, n, size=m)
    scores.append(clip_r_precision.r_precision(images, text, labels))
  # 20000 Bernoulli(1/10) draws: std 0.0021, the tolerance is 7 of them.
  assert abs(np.mean(scores) - 1.0 / n) < 0.015


def test_caption_labels_match_loosely_and_reject_unknowns():
  captions = ['a red cube.', 'A blue sphere', 'a green cone']
  labels = clip_r_precision.caption_labels(['A Red Cube', 'a green cone.'],
                                           captions)
  np.testing.assert_array_equal(labels, [0, 2])
  with pytest.raises(errors.UserError, match='not in the caption set'):
    clip_r_precision.caption_labels(['a yellow torus'], captions)
  with pytest.raises(errors.UserError, match='appears twice'):
    clip_r_precision.caption_labels(['a red cube'], captions + ['A red cube'])


def test_shipped_captions():
  captions = clip_r_precision.load_captions()
  assert len(captions) == 153
  assert len({clip_r_precision._key(c) for c in captions}) == 153
  assert captions[0] == 'a blue bicycle parked by a metal gate.'
  assert all(c == c.strip() and c.endswith('.') for c in captions)


# The render protocol.


def test_protocol_cameras_orbit_at_30_degrees_looking_at_origin():
  views = 8
  cams = clip_r_precision.protocol_cameras(views, distance=1.3, focal=1.0)
  pos = np.asarray(cams.position)
  np.testing.assert_allclose(np.asarray(cams.elevation), 30.0)
  np.testing.assert_allclose(
      np.rad2deg(np.arcsin(pos[:, 2] / np.linalg.norm(pos, axis=-1))), 30.0,
      atol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(pos, axis=-1), 1.3, rtol=1e-6)
  azimuth = np.rad2deg(np.arctan2(pos[:, 1], pos[:, 0])) % 360.0
  np.testing.assert_allclose(azimuth, np.arange(views) * 45.0, atol=1e-4)
  # Viewing direction (-back column) points from the camera to the origin.
  forward = -np.asarray(cams.rotation)[:, :, 2]
  np.testing.assert_allclose(forward, -pos / np.linalg.norm(
      pos, axis=-1, keepdims=True), atol=1e-5)
  # Upright: the right vector is horizontal.
  np.testing.assert_allclose(np.asarray(cams.rotation)[:, 2, 0], 0.0,
                             atol=1e-6)


def test_modes_are_colour_and_textureless():
  assert clip_r_precision.MODES == ('color', 'geo')
  assert clip_r_precision.SHADING == {'color': 'lambertian',
                                      'geo': 'textureless'}
  assert clip_r_precision.ELEVATION == 30.0
  assert len(clip_r_precision.CLIP_MODELS) == 3


# The CLIP loader and embeddings.


def test_missing_model_is_one_sentence(tmp_path, monkeypatch):
  with pytest.raises(errors.UserError) as info:
    clip_model.load_clip(str(tmp_path / 'no_such_model'))
  message = str(info.value)
  assert message.count('. ') == 0 and message.endswith('.')
  # The fix names evaluate.py's flag, not the prior's config field.
  assert '--clip_models' in message and 'guidance.model' not in message
  monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'empty_cache'))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  with pytest.raises(errors.UserError,
                     match=r'openai/clip-vit-base-patch32.*--clip_models'):
    clip_model.load_clip('openai/clip-vit-base-patch32')


def test_folder_without_weights_is_a_user_error(tiny_clip_dir, tmp_path):
  for name in ('config.json', 'vocab.json', 'merges.txt'):
    (tmp_path / name).write_bytes((tiny_clip_dir / name).read_bytes())
  with pytest.raises(errors.UserError, match='neither'):
    clip_model.load_clip(str(tmp_path))


CAPTIONS = ['a red cube.', 'a blue sphere.', 'a green cone.',
            'a yellow torus.', 'a snowman.']
VIEWS = 4


def test_safetensors_weights_are_converted(tiny_clip, tiny_clip_dir,
                                           tmp_path):
  """PyTorch-layout weights (as the hub serves them) load to the same params."""
  flat = traverse_util.flatten_dict(tiny_clip.params)
  state = {'text_model.embeddings.position_ids': np.arange(48)[None]}
  for key, value in flat.items():
    value = np.asarray(value)
    *head, last = key
    if last == 'kernel':
      value = value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)
      last = 'weight'
    elif last in ('scale', 'embedding'):
      last = 'weight'
    state['.'.join(head + [last])] = np.array(value, order='C')
  for name in ('config.json', 'vocab.json', 'merges.txt'):
    (tmp_path / name).write_bytes((tiny_clip_dir / name).read_bytes())
  safetensors.numpy.save_file(state, str(tmp_path / 'model.safetensors'),
                              metadata={'format': 'pt'})
  loaded = traverse_util.flatten_dict(
      clip_model.load_clip(str(tmp_path)).params)
  assert loaded.keys() == flat.keys()
  for key in flat:
    np.testing.assert_array_equal(loaded[key], flat[key])


def test_embeddings_are_unit_norm_and_match_the_model(tiny_clip,
                                                      tiny_clip_dir):
  # Shapes as in the pipeline test below, so compilations are shared.
  model, params = transformers.FlaxCLIPModel.from_pretrained(
      tiny_clip_dir, _do_init=False)
  text_emb = clip_model.embed_texts(tiny_clip, CAPTIONS)
  assert text_emb.shape == (5, 16)
  np.testing.assert_allclose(np.linalg.norm(text_emb, axis=-1), 1.0,
                             rtol=1e-5)
  tokens = tiny_clip.tokenizer(CAPTIONS, padding='max_length', max_length=48,
                               return_tensors='np')
  text_features = jax.jit(
      lambda p, i, m: model.get_text_features(i, m, params=p))
  ref = np.asarray(text_features(params, tokens['input_ids'],
                                 tokens['attention_mask']))
  np.testing.assert_allclose(text_emb, _unit(ref), atol=1e-5)

  images = np.random.default_rng(0).uniform(
      size=(VIEWS, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  image_emb = clip_model.embed_images(tiny_clip, images)
  assert image_emb.shape == (VIEWS, 16)
  # Reference: CLIP normalisation and NCHW done by hand.
  pixels = (images - np.asarray(clip_model.OPENAI_CLIP_MEAN)) / np.asarray(
      clip_model.OPENAI_CLIP_STD)
  image_features = jax.jit(
      lambda p, x: model.get_image_features(x, params=p))
  ref = np.asarray(image_features(params, pixels.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(image_emb, _unit(ref), atol=1e-5)


def test_preprocess_resizes_normalises_and_transposes(tiny_clip):
  colour = np.array([0.2, 0.5, 0.9], np.float32)
  images = np.broadcast_to(colour, (2, 64, 48, 3))
  pixels = np.asarray(clip_model.preprocess_images(
      images, IMAGE_SIZE, tiny_clip.mean, tiny_clip.std))
  assert pixels.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
  expected = (colour - np.asarray(tiny_clip.mean)) / np.asarray(tiny_clip.std)
  np.testing.assert_allclose(pixels, np.broadcast_to(
      expected[None, :, None, None], pixels.shape), atol=1e-5)


def test_batches_are_padded_to_one_shape():
  seen = []

  def fn(x):
    seen.append(x.shape)
    return 2 * x

  x = np.arange(7.0)[:, None]
  out = clip_model._batched(fn, [x], 3)
  np.testing.assert_array_equal(out, 2 * x)
  assert set(seen) == {(3, 1)}


# The whole pipeline with fake renders.


def test_clip_r_precision_with_fake_renders(tiny_clip, tiny_clip_dir,
                                            tmp_path, monkeypatch):
  captions, views = CAPTIONS, VIEWS
  # load_clip itself is tested above; reusing its result saves compilations.
  loaded = []
  monkeypatch.setattr(clip_model, 'load_clip',
                      lambda m, r='': loaded.append((m, r)) or tiny_clip)
  # Two seeds for three of the captions; each workdir renders noise of its
  # own, different per mode and view.
  prompts = ['a red cube', 'a red cube', 'a blue sphere', 'a blue sphere',
             'a snowman', 'a snowman']
  workdirs = []
  for i, prompt in enumerate(prompts):
    workdir = tmp_path / f'run{i}'
    workdir.mkdir()
    (workdir / 'config.json').write_text(json.dumps({'prompt': prompt}))
    workdirs.append(str(workdir))
  calls = []

  def render_views(workdir, cams, mode):
    calls.append((workdir, mode))
    assert cams.position.shape == (views, 3)
    np.testing.assert_allclose(np.asarray(cams.elevation), 30.0)
    seed = workdirs.index(workdir) * 2 + clip_r_precision.MODES.index(mode)
    return np.random.default_rng(seed).uniform(
        size=(views, IMAGE_SIZE, IMAGE_SIZE, 3))

  results = clip_r_precision.clip_r_precision(
      workdirs, captions, clip_models=[str(tiny_clip_dir)], num_views=views,
      renderer=render_views)
  assert loaded == [(str(tiny_clip_dir), '')]
  assert sorted(calls) == sorted((w, m) for w in workdirs
                                 for m in clip_r_precision.MODES)

  # Reference: hits computed directly from the same embeddings.
  text_emb = clip_model.embed_texts(tiny_clip, captions)
  labels = clip_r_precision.caption_labels(prompts, captions)
  model = str(tiny_clip_dir)
  for mode in clip_r_precision.MODES:
    per_run = []
    for workdir, label in zip(workdirs, labels):
      images = render_views(workdir, clip_r_precision.protocol_cameras(views),
                            mode)
      image_emb = clip_model.embed_images(tiny_clip, images)
      per_run.append(clip_r_precision.r_precision(
          image_emb, text_emb, np.full((views,), label)))
    per_caption = [np.mean(per_run[0:2]), np.mean(per_run[2:4]),
                   np.mean(per_run[4:6])]
    assert results['r_precision'][model][mode] == pytest.approx(
        np.mean(per_caption), abs=1e-9)
    assert [w['r_precision'][model][mode] for w in results['per_workdir']
            ] == pytest.approx(per_run, abs=1e-9)
  assert results['num_captions'] == 5
  assert results['num_evaluated_captions'] == 3
  assert results['seeds_per_caption'] == [2, 2]

  table = clip_r_precision.format_table(results)
  assert model in table and 'color' in table and 'geo' in table
  path = tmp_path / 'out' / 'clip_r_precision.json'
  files.write_json(path, results)
  assert json.loads(path.read_text()) == json.loads(json.dumps(results))


def test_clip_r_precision_rejects_unknown_prompts(tiny_clip_dir, tmp_path):
  with pytest.raises(errors.UserError, match='not in the caption set'):
    clip_r_precision.clip_r_precision(
        [str(tmp_path)], ['a red cube.'], clip_models=[str(tiny_clip_dir)],
        prompts=['a teapot'], renderer=lambda *a: None)
  with pytest.raises(errors.UserError, match='no config.json'):
    clip_r_precision.clip_r_precision(
        [str(tmp_path)], ['a red cube.'], clip_models=[str(tiny_clip_dir)],
        renderer=lambda *a: None)
