r"""COCO (Karpathy split) with the hyperparameters of the paper and its code.

Run the pipeline (data, pretrain (a no-op), experts, distill, evaluate) on a
pretrained Hugging Face ViT (a folder with config.json and model.safetensors):

  python -m vldd_jax.main --config=configs/coco.py:backbone=/models/vit-base \
      --config.data.ann_file=/data/coco/dataset_coco.json \
      --config.data.image_root=/data/coco/images \
      --workdir=/data/vldd_coco

The paper's Table 1 (every method of `evaluate.methods` at 100, 200, 500 and
1000 pairs, reusing the experts of the run above):

  python -m vldd_jax.main --config=configs/coco.py:backbone=/models/vit-base \
      --config.stage=compare \
      --config.data.ann_file=/data/coco/dataset_coco.json \
      --config.data.image_root=/data/coco/images \
      --workdir=/data/vldd_coco

Data: `dataset_coco.json` from Karpathy's `caption_datasets.zip`; `image_root`
is the folder that holds `train2014/` and `val2014/` from the COCO website
(README, "Bring your own data"); the paths above are also the defaults of
`data.ann_file` and `data.image_root`. Karpathy's `restval` images join train
(113,287 train images; `--config.data.restval_to_train=False` drops them), and
each image keeps its first 5 captions. The `data` stage writes the 224 px splits
and the caption embeddings under `data.data_dir` (empty: `<workdir>/tfds`,
about 18 GB); point several workdirs at one `--config.data.data_dir` to prepare
them once.

Config arguments: as configs/flickr30k.py (`backbone=PATH`, `bert=PATH`,
`image_size=N`, `runlocal`), whose settings this file reuses: only the data
differs. For `runlocal` on a CPU, point `data.ann_file` at a trimmed copy of
`dataset_coco.json` (the snippet in configs/flickr30k.py works on it too).
"""
import os

import ml_collections

from vldd_jax import config_lib

_FLICKR30K = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flickr30k.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the COCO config; `arg` as in configs/flickr30k.py."""
  config_lib.parse_arg(arg, runlocal=False, image_size=224, backbone="", bert="")
  config = config_lib.load_config(_FLICKR30K + (f":{arg}" if arg else ""))
  config.data.update(
      ann_file="/data/coco/dataset_coco.json",  # README layout.
      image_root="/data/coco/images",  # Holds train2014/ and val2014/.
      restval_to_train=True,  # Library default: Karpathy's restval joins train.
  )
  return config
