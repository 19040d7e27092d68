"""Datasets (TFDS builders), input pipeline and caption-embedding cache."""
