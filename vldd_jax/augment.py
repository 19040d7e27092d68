"""Differentiable augmentation of synthetic images, as in the VLDD and MTT code.

DSA (Zhao & Bilen, ICML 2021), which the VLDD code applies to synthetic images
in every student step with the strategy colour_crop_cutout_flip_scale_rotate.
As DSA's default mode ('S'), each call applies one of the six, chosen at
random for the minibatch, with its parameters drawn per image as DSA's
`rand_*` functions do (`torch.rand(x.shape[0])`); `per_image=False` shares one
draw across the minibatch (DSA's `batchmode`). Everything is jax ops, so
gradients reach the pixels. Ranges are DSA's `ParamDiffAug` defaults.
"""
import jax
import jax.numpy as jnp

BRIGHTNESS = 1.0  # Added offset in [-0.5, 0.5] x this.
SATURATION = 2.0  # Colour deviation from the grey level scaled by [0, 2).
CONTRAST = 0.5  # Deviation from the image mean scaled by [0.5, 1.5).
CROP_PAD = 0.125  # Translation up to this fraction of the side, each way.
CUTOUT = 0.5  # Side of the zeroed square, as a fraction of the image side.
SCALE = 1.2  # Each axis scaled by a factor in [1/1.2, 1.2].
ROTATE = 15.0  # Degrees, each way.

# Each transform maps one image [H, W, C] and its key to an image.


def _colour(image: jax.Array, key: jax.Array) -> jax.Array:
  k1, k2, k3 = jax.random.split(key, 3)
  image = image + (jax.random.uniform(k1) - 0.5) * BRIGHTNESS
  grey = image.mean(axis=-1, keepdims=True)
  image = grey + (image - grey) * jax.random.uniform(k2) * SATURATION
  mean = image.mean()
  return mean + (image - mean) * (jax.random.uniform(k3) + CONTRAST)


def _resample(image: jax.Array, matrix: jax.Array, shift: jax.Array) -> jax.Array:
  """Output pixel p (coordinates in [-1, 1]) reads the input at matrix @ p + shift.

  Bilinear, zeros outside, as DSA's `grid_sample`.
  """
  h, w, _ = image.shape
  ys, xs = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w), indexing="ij")
  src_x = matrix[0, 0] * xs + matrix[0, 1] * ys + shift[0]
  src_y = matrix[1, 0] * xs + matrix[1, 1] * ys + shift[1]
  coords = [(src_y + 1) * (h - 1) / 2, (src_x + 1) * (w - 1) / 2]

  def sample(channel):
    return jax.scipy.ndimage.map_coordinates(channel, coords, order=1, mode="constant",
                                             cval=0.0)

  return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)


def _crop(image: jax.Array, key: jax.Array) -> jax.Array:
  shift = jax.random.uniform(key, (2,), minval=-CROP_PAD, maxval=CROP_PAD) * 2
  return _resample(image, jnp.eye(2), shift)


def _flip(image: jax.Array, key: jax.Array) -> jax.Array:
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def _scale(image: jax.Array, key: jax.Array) -> jax.Array:
  factors = jnp.exp(jax.random.uniform(key, (2,), minval=-1, maxval=1) * jnp.log(SCALE))
  return _resample(image, jnp.diag(factors), jnp.zeros(2))


def _rotate(image: jax.Array, key: jax.Array) -> jax.Array:
  theta = jnp.deg2rad(jax.random.uniform(key, minval=-ROTATE, maxval=ROTATE))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  return _resample(image, jnp.array([[cos, -sin], [sin, cos]]), jnp.zeros(2))


def _cutout(image: jax.Array, key: jax.Array) -> jax.Array:
  h, w, _ = image.shape
  cy, cx = jax.random.uniform(key, (2,))
  ys = jnp.arange(h)[:, None] / h
  xs = jnp.arange(w)[None, :] / w
  inside = (jnp.abs(ys - cy) < CUTOUT / 2) & (jnp.abs(xs - cx) < CUTOUT / 2)
  return image * (~inside)[:, :, None]


AUGMENTATIONS = (_colour, _crop, _cutout, _flip, _scale, _rotate)


def augment(images: jax.Array, key: jax.Array, per_image: bool = True) -> jax.Array:
  """Applies one random augmentation to a minibatch [B, H, W, C].

  The augmentation is chosen once for the minibatch; its parameters are drawn
  per image (DSA's default), or once for all with `per_image=False`.
  """
  k_choice, k_params = jax.random.split(key)
  choice = jax.random.randint(k_choice, (), 0, len(AUGMENTATIONS))
  keys = (jax.random.split(k_params, images.shape[0]) if per_image
          else jnp.broadcast_to(k_params, images.shape[:1]))
  per_example = lambda image, k: jax.lax.switch(choice, AUGMENTATIONS, image, k)
  return jax.vmap(per_example)(images, keys)
