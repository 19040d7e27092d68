"""Dual encoder: image tower + heads over precomputed frozen text embeddings."""
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vldd_jax.models import convnet, vit
from vldd_jax.models.lora import LoRASpec

IMAGE_HEADS = ("linear", "none")
TRAINABLE_MODES = ("lora+heads", "heads", "all")


class PaperTextHead(nn.Module):
  """The paper's ProjectionHead: p = Linear(x); LN(p + Dropout(Linear(GELU(p)))).

  Projecting first gives the residual matching dims, as in the paper's code.
  """
  features: int
  dropout: float

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    projected = nn.Dense(self.features, name="projection")(x)
    h = nn.Dense(self.features, name="fc")(nn.gelu(projected, approximate=False))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.LayerNorm(epsilon=1e-5, name="layer_norm")(h + projected)


class LinearTextHead(nn.Module):
  """A single Dense projection."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train
    return nn.Dense(self.features, name="projection")(x)


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


# The text heads `model.text_head` names, made from the model config.
TEXT_HEADS: dict[str, Callable[[ml_collections.ConfigDict], nn.Module]] = {
    "paper": lambda config: PaperTextHead(config.embed_dim, config.dropout),
    "linear": lambda config: LinearTextHead(config.embed_dim),
}


def _vit(config: ml_collections.ConfigDict) -> nn.Module:
  lora = LoRASpec.create(config.lora.rank, config.lora.alpha, config.lora.targets,
                         vit.LORA_TARGETS)
  return vit.ViT(config.vit.patch, config.vit.width, config.vit.depth, config.vit.heads,
                 config.vit.mlp_dim, pool=config.vit.pool, ln_eps=config.vit.ln_eps,
                 lora=lora)


def _convnet(config: ml_collections.ConfigDict) -> nn.Module:
  return convnet.ConvNet(config.convnet.depth, config.convnet.width, config.convnet.pool)


# The image towers `model.tower` names, made from the model config.
TOWERS: dict[str, Callable[[ml_collections.ConfigDict], nn.Module]] = {
    "vit": _vit, "convnet": _convnet}


class DualEncoder(nn.Module):
  """Image tower `img` + `img_head`, text head `txt_head`, and the logit scale.

  Parameters live under `img/`, `img_head/`, `txt_head/` and, when learned,
  `log_scale` (log of 1 / temperature).
  """
  img: nn.Module
  txt_head: nn.Module
  embed_dim: int
  image_head: str = "linear"
  temperature: float = 0.07
  learn_temperature: bool = False

  def setup(self):
    if self.image_head == "linear":
      self.img_head = nn.Dense(self.embed_dim)
    if self.learn_temperature:
      self.log_scale = self.param(
          "log_scale", nn.initializers.constant(-np.log(self.temperature)), ())

  def embed_images(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """Images [B, H, W, C] (normalised floats) to unit embeddings [B, embed_dim]."""
    return self.embed_image_features(self.image_features(images), train=train)

  def image_features(self, images: jax.Array) -> jax.Array:
    """The tower's output [B, features] (the image head's input)."""
    return self.img(images)

  def embed_image_features(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    """Tower features [B, features] to unit embeddings [B, embed_dim]."""
    del train  # The image head has no dropout.
    if self.image_head == "linear":
      z = self.img_head(z)
    elif z.shape[-1] != self.embed_dim:
      raise ValueError(f"image_head='none' needs tower features of size embed_dim="
                       f"{self.embed_dim}, got {z.shape[-1]}.")
    return _l2_normalize(z)

  def embed_texts(self, text_emb: jax.Array, *, train: bool = False) -> jax.Array:
    """Frozen text embeddings [B, D_text] to unit embeddings [B, embed_dim]."""
    return _l2_normalize(self.txt_head(text_emb, train=train))

  def logit_scale(self) -> jax.Array:
    """1 / temperature: a constant, or exp(log_scale) when learned."""
    if self.learn_temperature:
      return jnp.exp(self.log_scale)
    return jnp.asarray(1.0 / self.temperature, jnp.float32)

  def __call__(self, images: jax.Array, text_emb: jax.Array, *,
               train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    return (self.embed_images(images, train=train),
            self.embed_texts(text_emb, train=train), self.logit_scale())


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises naming the first `model.*` choice no registry or list holds."""
  choices = {"tower": tuple(TOWERS), "image_head": IMAGE_HEADS,
             "text_head": tuple(TEXT_HEADS), "trainable": TRAINABLE_MODES,
             "vit.pool": vit.POOLS, "convnet.pool": convnet.POOLS}
  for name, allowed in choices.items():
    value = config
    for part in name.split("."):
      value = value[part]
    if value not in allowed:
      raise ValueError(f"model.{name}={value!r}; expected one of {allowed}.")
  LoRASpec.create(config.lora.rank, config.lora.alpha, config.lora.targets,
                  vit.LORA_TARGETS)


def build_model(config: ml_collections.ConfigDict) -> DualEncoder:
  """Builds the dual encoder that `config_lib.model_config()`-like `config` describes."""
  check_config(config)
  return DualEncoder(TOWERS[config.tower](config), TEXT_HEADS[config.text_head](config),
                     config.embed_dim, image_head=config.image_head,
                     temperature=config.temperature,
                     learn_temperature=config.learn_temperature)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _init(model: DualEncoder, rng: jax.Array, image_shape: tuple[int, ...],
          text_dim: int) -> dict:
  images = jnp.zeros((1,) + image_shape, jnp.float32)
  text_emb = jnp.zeros((1, text_dim), jnp.float32)
  return model.init({"params": rng}, images, text_emb)["params"]


def init_params(model: DualEncoder, rng: jax.Array, image_shape: tuple[int, ...],
                text_dim: int) -> dict:
  """Initial parameters: a nested dict of arrays (no "params" collection level).

  Args:
    model: from `build_model`.
    rng: PRNG key.
    image_shape: one image's shape, (H, W, C).
    text_dim: size of the precomputed text embeddings.
  """
  return _init(model, rng, tuple(image_shape), int(text_dim))
