"""Image towers, LoRA adapters and the dual encoder."""
from vldd_jax.models.dual_encoder import build_model, default_model_config, init_params
from vldd_jax.models.hf_vit import hf_vit_config, load_hf_vit
from vldd_jax.models.partition import (make_apply_fn, make_feature_fn, merge_params,
                                        split_params)

__all__ = [
    "build_model", "default_model_config", "hf_vit_config", "init_params", "load_hf_vit",
    "make_apply_fn", "make_feature_fn", "merge_params", "split_params",
]
