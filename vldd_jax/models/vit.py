"""Vision Transformer image tower (pre-LN), with LoRA on chosen kernels."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vldd_jax.models.lora import LoRADense, LoRASpec

LORA_TARGETS = ("q", "k", "v", "out", "mlp")
POOLS = ("gap", "cls")
# Hugging Face's "gelu" is the exact erf form.
_gelu = functools.partial(nn.gelu, approximate=False)


class Attention(nn.Module):
  """Multi-head self-attention with separate q/k/v/out kernels (the HF layout)."""
  heads: int
  lora: LoRASpec

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    if d % self.heads:
      raise ValueError(f"width {d} is not divisible by heads {self.heads}")
    dense = lambda name: LoRADense(d, self.lora.rank_for(name), self.lora.alpha, name=name)
    split = lambda y: y.reshape(b, t, self.heads, d // self.heads)
    q, k, v = (split(dense(name)(x)) for name in ("q", "k", "v"))
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) / np.sqrt(d // self.heads)
    ctx = jnp.einsum("bhqk,bkhc->bqhc", jax.nn.softmax(logits, axis=-1), v)
    return dense("out")(ctx.reshape(b, t, d))


class Mlp(nn.Module):
  """Dense -> GELU -> Dense; the "mlp" LoRA target adapts both kernels."""
  mlp_dim: int
  lora: LoRASpec

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    rank, alpha = self.lora.rank_for("mlp"), self.lora.alpha
    h = _gelu(LoRADense(self.mlp_dim, rank, alpha, name="fc1")(x))
    return LoRADense(x.shape[-1], rank, alpha, name="fc2")(h)


class EncoderBlock(nn.Module):
  """x + Attention(LN(x)), then x + Mlp(LN(x))."""
  heads: int
  mlp_dim: int
  ln_eps: float
  lora: LoRASpec

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = functools.partial(nn.LayerNorm, epsilon=self.ln_eps)
    x = x + Attention(self.heads, self.lora, name="attention")(norm(name="ln_before")(x))
    return x + Mlp(self.mlp_dim, self.lora, name="mlp")(norm(name="ln_after")(x))


class ViT(nn.Module):
  """Images [B, H, W, C] to features [B, width].

  `pool="gap"` averages the patch tokens (no CLS token); `pool="cls"` prepends a
  learned CLS token and returns its final hidden state, as Hugging Face
  `ViTModel.last_hidden_state[:, 0]` (without HF's extra tanh pooler).
  """
  patch: int
  width: int
  depth: int
  heads: int
  mlp_dim: int
  pool: str = "gap"
  ln_eps: float = 1e-6
  lora: LoRASpec = LoRASpec()

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    if self.pool not in POOLS:
      raise ValueError(f"Unknown pool {self.pool!r}; expected one of {POOLS}.")
    p = self.patch
    if images.shape[1] % p or images.shape[2] % p:
      raise ValueError(f"Image size {images.shape[1:3]} is not a multiple of patch {p}.")
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID",
                name="embedding")(images)
    b, hp, wp, d = x.shape
    x = x.reshape(b, hp * wp, d)
    if self.pool == "cls":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, d))
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1,) + x.shape[1:])
    x = x + pos
    for i in range(self.depth):
      x = EncoderBlock(self.heads, self.mlp_dim, self.ln_eps, self.lora,
                       name=f"encoderblock_{i}")(x)
    x = nn.LayerNorm(epsilon=self.ln_eps, name="encoder_norm")(x)
    return x[:, 0] if self.pool == "cls" else x.mean(axis=1)
