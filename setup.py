"""dreamfusion_jax: DreamFusion text-to-3D in JAX/Flax."""

import setuptools

setuptools.setup(
    name='dreamfusion_jax',
    version='0.1.0',
    description=('DreamFusion (text-to-3D with Score Distillation Sampling) '
                 'in JAX/Flax.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['dreamfusion_jax',
                                               'dreamfusion_jax.*']),
    package_data={'dreamfusion_jax': ['data/*.txt']},
    install_requires=[
        'jax>=0.7',
        'flax>=0.10',
        'optax>=0.2.4',
        'orbax-checkpoint>=0.11',
        'ml_collections>=1.0',
        'absl-py>=2.0',
        # The last releases with Flax classes (diffusers 0.40 and
        # transformers 5 removed them).
        'diffusers>=0.35,<0.40',
        'transformers>=4.46,<5',
        'numpy>=1.26',
        'safetensors>=0.4',
        'huggingface_hub>=0.26',
        'imageio>=2.34',
        'imageio-ffmpeg>=0.5',
        'pillow>=10',
        'trimesh>=4.0',
        # UV atlases of exported meshes, and their decimation (used through
        # trimesh's simplify_quadric_decimation).
        'xatlas>=0.0.9',
        'fast-simplification>=0.1.7',
        'scikit-image>=0.22',
        'scipy>=1.11',
        'networkx>=3.0',
        'tensorboardX>=2.6',
    ],
    extras_require={
        # IPython: the notebook test runs the Colab notebook's cells;
        # mitsuba: the independent renderer of experiments/render_mesh_check.py.
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'ipython>=8',
                 'mitsuba>=3.5'],
        # Accelerator builds of jax; pick the one matching the machine.
        'cuda12': ['jax[cuda12]'],
        'cuda13': ['jax[cuda13]'],
        'tpu': ['jax[tpu]'],
    },
)
