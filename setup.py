"""vldd_jax: vision-language dataset distillation in JAX/Flax."""
import setuptools

setuptools.setup(
    name="vldd_jax",
    version="0.1.0",
    description="Vision-language dataset distillation by LoRA trajectory matching, in JAX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["vldd_jax", "vldd_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "absl-py",
        "array_record",
        "chex",
        # TFDS 4.9 needs it to prepare builders defined in a package, but only
        # declares it for Python < 3.9.
        "importlib_resources",
        "flax>=0.12",
        "jax>=0.10",
        "jaxlib>=0.10",
        "matplotlib",
        "ml-collections>=1.1",
        "numpy",
        "optax>=0.2",
        "orbax-checkpoint>=0.12",
        "pillow",
        "safetensors",
        "tensorflow-datasets>=4.9",
        "tqdm",
        # Tokenizer only: transformers 5 has no Flax models and we never import torch.
        "transformers>=5",
    ],
    extras_require={
        # pytest-xdist: tests are mostly single-threaded compilation, one per core.
        "test": ["pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel"],
        # TFDS catalog datasets such as coco_captions decode with TensorFlow.
        "tf": ["tensorflow"],
    },
)
