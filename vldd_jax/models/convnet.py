"""MTT-style ConvNet tower: [conv3x3 -> instance norm -> ReLU -> avg-pool 2] x depth."""
import flax.linen as nn
import jax

POOLS = ("flatten", "gap")


class ConvNet(nn.Module):
  """Images [B, H, W, C] to features: [B, H W width / 4^depth] ("flatten") or [B, width].

  LoRA does not apply to this tower; it trains fully.
  """
  depth: int = 3
  width: int = 128
  pool: str = "flatten"

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    if self.pool not in POOLS:
      raise ValueError(f"Unknown pool {self.pool!r}; expected one of {POOLS}.")
    x = images
    for i in range(self.depth):
      x = nn.Conv(self.width, (3, 3), padding="SAME", name=f"conv_{i}")(x)
      # One group per channel is instance norm; eps as PyTorch's InstanceNorm2d.
      x = nn.GroupNorm(num_groups=self.width, epsilon=1e-5, name=f"norm_{i}")(x)
      x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
    if self.pool == "gap":
      return x.mean(axis=(1, 2))
    return x.reshape(x.shape[0], -1)
