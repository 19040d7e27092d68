"""Dual encoder: image tower + heads over precomputed frozen text embeddings."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vldd_jax.models import convnet, vit
from vldd_jax.models.lora import LoRASpec

TOWERS = ("vit", "convnet")
IMAGE_HEADS = ("linear", "none")
TEXT_HEADS = ("paper", "linear")
TRAINABLE_MODES = ("lora+heads", "heads", "all")


def default_model_config() -> ml_collections.ConfigDict:
  """The tiny CPU default: a ViT on 32x32 images with 16 tokens, rank-4 LoRA."""
  return ml_collections.ConfigDict(dict(
      tower="vit",  # "vit" | "convnet".
      vit=dict(patch=8, width=64, depth=2, heads=4, mlp_dim=256,
               pool="gap",  # "gap" | "cls" (CLS token, as Hugging Face ViT).
               ln_eps=1e-6),
      convnet=dict(depth=3, width=128, pool="flatten"),  # pool: "flatten" | "gap".
      lora=dict(rank=4, alpha=4.0, targets=vit.LORA_TARGETS),  # rank 0: no LoRA.
      image_head="linear",  # "none": tower features are the image embedding.
      embed_dim=64,
      text_head="paper",  # "paper" (MLP block + residual + LayerNorm) | "linear".
      dropout=0.1,  # In the paper's text head.
      temperature=0.07,  # logit scale = 1 / temperature.
      learn_temperature=False,
      trainable="lora+heads",  # "lora+heads" | "heads" | "all".
      # Tower weights: "pretrain" (the workdir's pretrain stage), "scratch", or
      # a Hugging Face ViT folder / .safetensors file (see hf_vit_config).
      backbone="pretrain",
  ))


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


class DualEncoder(nn.Module):
  """Image tower `img` + `img_head`, text head `txt_head`, and the logit scale.

  Parameters live under `img/`, `img_head/`, `txt_head/` and, when learned,
  `log_scale` (log of 1 / temperature).
  """
  img: nn.Module
  embed_dim: int
  image_head: str = "linear"
  text_head: str = "paper"
  dropout: float = 0.1
  temperature: float = 0.07
  learn_temperature: bool = False

  def setup(self):
    if self.image_head == "linear":
      self.img_head = nn.Dense(self.embed_dim)
    if self.text_head == "paper":
      self.txt_head = PaperTextHead(self.embed_dim, self.dropout)
    else:
      self.txt_head = LinearTextHead(self.embed_dim)
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


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"model.{name}={value!r}; expected one of {choices}.")


def build_model(config: ml_collections.ConfigDict) -> DualEncoder:
  """Builds the dual encoder described by a `default_model_config()`-like config."""
  _check_choice("tower", config.tower, TOWERS)
  _check_choice("image_head", config.image_head, IMAGE_HEADS)
  _check_choice("text_head", config.text_head, TEXT_HEADS)
  _check_choice("trainable", config.trainable, TRAINABLE_MODES)
  if config.tower == "vit":
    _check_choice("vit.pool", config.vit.pool, vit.POOLS)
    lora = LoRASpec.create(config.lora.rank, config.lora.alpha, config.lora.targets,
                           vit.LORA_TARGETS)
    tower = vit.ViT(config.vit.patch, config.vit.width, config.vit.depth,
                    config.vit.heads, config.vit.mlp_dim, pool=config.vit.pool,
                    ln_eps=config.vit.ln_eps, lora=lora)
  else:
    _check_choice("convnet.pool", config.convnet.pool, convnet.POOLS)
    tower = convnet.ConvNet(config.convnet.depth, config.convnet.width,
                            config.convnet.pool)
  return DualEncoder(tower, config.embed_dim, image_head=config.image_head,
                     text_head=config.text_head, dropout=config.dropout,
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
