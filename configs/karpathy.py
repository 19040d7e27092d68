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

Every stage runs with the settings measured on shapes (3 experts x 10 epochs,
100 pairs; docs/quality.md); override any field with `--config.<field>=...`.

Your own small data on a CPU (a few thousand images): `configs/karpathy.py:small`
(32 px, the tiny default ViT from scratch, expert batches of 32), or with
`--config.model.backbone=<shapes workdir>/pretrain --config.model.trainable=lora+heads`
the tower a shapes run pretrained (docs/own_data.md).

Config arguments (after the `:`): `small` (above); `image_size=N` (default 224,
32 with `small`); `backbone=PATH`
sets the image tower to that ViT's architecture and weights. Without it the
tower starts from scratch and trains whole (`model.trainable="all"`), or set
`--config.model.backbone=<other workdir>/pretrain` (with its `model.trainable`)
to borrow a tower pretrained there.
"""
import ml_collections

from vldd_jax import config_lib
from vldd_jax import hf_checkpoint


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the Karpathy-format config; `arg` as in the module docstring."""
  arg = config_lib.parse_arg(arg, image_size=0, backbone="", small=False)
  image_size = arg.image_size or (32 if arg.small else 224)
  config = ml_collections.ConfigDict()
  config.stage = "pipeline"
  config.seed = 0
  config.multihost = False  # True: jax.distributed.initialize() (parallel.py).
  # One at a time: a 224-px student keeps a device busy (configs/shapes.py: 3).
  config.concurrent_students = 1

  config.data = ml_collections.ConfigDict(dict(
      name="karpathy",
      data_dir="",  # Empty: <workdir>/tfds.
      # A split whose images and caption embeddings fit in this many MiB is read
      # whole into memory (fastest); a larger one by rows from disk, as batches
      # need them, so memory does not grow with the dataset (docs/scaling.md).
      in_memory_mb=512,
      ann_file="",  # dataset_flickr30k.json / dataset_coco.json; empty: TFDS manual dir.
      image_root="",  # Folder the JSON's `filepath/filename` entries are relative to.
      image_size=image_size,
      restval_to_train=True,  # COCO's Karpathy `restval` joins train, as usual.
      skip_bad_images=False,  # True: skip missing/corrupt images and list them.
      captions_per_image=5,  # Karpathy split; retrieval scores 5 captions per image.
  ))
  config.text = config_lib.text_config()
  config.model = config_lib.model_config()
  if arg.backbone:
    config.model.vit = hf_checkpoint.vit_config(arg.backbone)
    config.model.backbone = arg.backbone
  else:
    config.model.backbone = "scratch"
  # No `pretrain` section: that stage needs shapes' attribute labels; the tower
  # comes from `backbone=`, another workdir's `pretrain/` folder, or "scratch".
  # A tower from scratch must train (and be matched) whole, as the VLDD code's;
  # frozen random towers would not be shared by the experts.
  if config.model.backbone == "scratch":
    config.model.trainable = "all"
  config.experts = config_lib.experts_config()
  config.experts.update(num_experts=3, epochs=10)  # As shapes; the paper: 20 x 10.
  if arg.small:  # Enough SGD steps per epoch on a few thousand pairs (shapes:quick).
    config.experts.batch_size = 32
  # The settings measured on shapes, whose normalised meta rates need no
  # retuning per dataset (docs/quality.md).
  config.distill = config_lib.small_data_distill_config()
  config.evaluate = config_lib.evaluate_config()
  config.compare = config_lib.compare_config()
  return config
