"""Stage `data`: build the dataset's splits and cache their caption embeddings."""
import jax
import ml_collections
from absl import logging

from vldd_jax import parallel
from vldd_jax.data import input_pipeline

RETRIEVAL_SPLITS = ("train", "val", "test")


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Prepares every retrieval split; a rerun only reads what is cached.

  With several processes, process 0 writes the data and the others wait.
  """
  if jax.process_index() == 0:
    _prepare(config, workdir)
  parallel.sync("data stage")


def _prepare(config: ml_collections.ConfigDict, workdir: str) -> None:
  ds_builder = input_pipeline.prepare(config, workdir)
  logging.info("Dataset %s/%s ready in %s.", ds_builder.name,
               ds_builder.builder_config.name, ds_builder.data_dir)
  encoder = input_pipeline.text_encoder(config)
  for split in RETRIEVAL_SPLITS:
    data = input_pipeline.load_split(config, workdir, split, encoder=encoder)
    logging.info("Split %s: %d images, caption embeddings %s.", split,
                 len(data), data.text_emb.shape)
