"""Image towers, LoRA adapters and the dual encoder."""
from vldd_jax.models.dual_encoder import (TEXT_HEADS, TOWERS, build_model, check_config,
                                          init_params)
from vldd_jax.models.hf_vit import hf_vit_grafter, load_hf_vit
from vldd_jax.models.partition import (make_apply_fn, make_feature_fn, merge_params,
                                        split_params)

__all__ = [
    "TEXT_HEADS", "TOWERS", "build_model", "check_config", "hf_vit_grafter", "init_params",
    "load_hf_vit", "make_apply_fn", "make_feature_fn", "merge_params", "split_params",
]
