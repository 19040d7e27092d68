r"""Any Karpathy-format image-caption set (Flickr30K, COCO, your own).

Prepare the splits and caption embeddings:

  python -m vldd_jax.main --config=configs/karpathy.py --config.stage=data \
      --config.data.ann_file=/data/dataset_flickr30k.json \
      --config.data.image_root=/data/flickr30k-images --workdir=/tmp/vldd_f30k

For COCO, `image_root` is the folder that holds train2014/ and val2014/.
Train experts on a pretrained Hugging Face ViT (a folder with config.json and
model.safetensors):

  python -m vldd_jax.main --config=configs/karpathy.py:backbone=/models/vit-base \
      --config.stage=experts ... --workdir=/tmp/vldd_f30k

Config arguments (after the `:`): `image_size=N` (default 224); `backbone=PATH`
sets the image tower to that ViT's architecture and weights.
"""
import ml_collections

from vldd_jax import config_lib
from vldd_jax import models


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the Karpathy-format config; `arg` as in the module docstring."""
  arg = config_lib.parse_arg(arg, image_size=224, backbone="")
  config = ml_collections.ConfigDict()
  config.stage = "pipeline"
  config.seed = 0
  config.multihost = False  # True: jax.distributed.initialize() (parallel.py).

  config.data = ml_collections.ConfigDict(dict(
      name="karpathy",
      data_dir="",  # Empty: <workdir>/tfds.
      ann_file="",  # dataset_flickr30k.json / dataset_coco.json; empty: TFDS manual dir.
      image_root="",  # Folder the JSON's `filepath/filename` entries are relative to.
      image_size=arg.image_size,
      restval_to_train=True,  # COCO's Karpathy `restval` joins train, as usual.
      skip_bad_images=False,  # True: skip missing/corrupt images and list them.
  ))
  config.text = config_lib.text_config()
  config.model = models.default_model_config()
  if arg.backbone:
    config.model.vit = models.hf_vit_config(arg.backbone)
    config.model.backbone = arg.backbone
  else:
    config.model.backbone = "scratch"
  config.experts = config_lib.experts_config()
  return config
