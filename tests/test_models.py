"""Tests for vldd_jax.models: towers, LoRA, dual encoder, partition, HF ViT loading."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy
from flax import traverse_util

from vldd_jax import config_lib
from vldd_jax import hf_checkpoint
from vldd_jax import models
from vldd_jax import trainer
from vldd_jax.models import convnet, lora, partition, vit

TEXT_DIM = 12


def tiny_config(**overrides):
  config = config_lib.model_config()
  config.vit.update(dict(patch=8, width=16, depth=2, heads=2, mlp_dim=32))
  config.convnet.update(dict(depth=2, width=8))
  config.lora.rank = 2
  config.embed_dim = 16
  config.update(overrides)
  return config


def flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


def build(config, image_size=32):
  model = models.build_model(config)
  params = models.init_params(model, jax.random.key(0), (image_size, image_size, 3),
                              TEXT_DIM)
  return model, params


def param_shapes(config, image_size=32):
  """The parameter tree as ShapeDtypeStructs: traced, never compiled (fast)."""
  model = models.build_model(config)
  return jax.eval_shape(lambda: models.init_params(
      model, jax.random.key(0), (image_size, image_size, 3), TEXT_DIM))


@pytest.fixture(name="tiny", scope="module")
def fixture_tiny():
  return build(tiny_config())


def batch(n=4, image_size=32, seed=1):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(k1, (n, image_size, image_size, 3)),
          jax.random.normal(k2, (n, TEXT_DIM)))


def clip_loss(image_emb, text_emb, scale):
  logits = scale * image_emb @ text_emb.T
  labels = jnp.arange(logits.shape[0])
  return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())


# LoRA.

def test_lora_dense_scale_and_zero_init():
  layer = lora.LoRADense(3, rank=2, alpha=6.0)
  x = jnp.arange(8.0).reshape(2, 4)
  params = layer.init(jax.random.key(0), x)["params"]
  np.testing.assert_array_equal(params["lora_b"], np.zeros((2, 3)))
  base = x @ params["kernel"] + params["bias"]
  np.testing.assert_array_equal(layer.apply({"params": params}, x), base)
  params = dict(params, lora_b=jnp.ones((2, 3)))
  expected = base + 3.0 * (x @ params["lora_a"]) @ params["lora_b"]  # alpha / rank = 3.
  # The layer adds the adapter to the kernel first: float32 rounding differs.
  np.testing.assert_allclose(layer.apply({"params": params}, x), expected, rtol=1e-6,
                             atol=1e-6)


def test_adapted_model_equals_base_at_init(tiny):
  adapted, params = tiny
  base = models.build_model(tiny_config(lora=dict(rank=0, alpha=1.0, targets=())))
  base_params = {k: v for k, v in flat(params).items()
                 if not k.endswith(("lora_a", "lora_b"))}
  assert len(base_params) < len(flat(params))
  images, text = batch()
  out = jax.jit(adapted.apply)({"params": params}, images, text)
  base_params = traverse_util.unflatten_dict(base_params, sep="/")
  out_base = jax.jit(base.apply)({"params": base_params}, images, text)
  for a, b in zip(out, out_base):
    np.testing.assert_array_equal(a, b)


def test_lora_targets_and_rank_zero():
  params = param_shapes(tiny_config(lora=dict(rank=2, alpha=2.0, targets=("q", "mlp"))))
  adapted = sorted({k.rsplit("/", 2)[-2] for k in flat(params) if k.endswith("lora_a")})
  assert adapted == ["fc1", "fc2", "q"]
  for no_lora in (dict(rank=0, alpha=1.0, targets=vit.LORA_TARGETS),
                  dict(rank=4, alpha=1.0, targets=())):
    params = param_shapes(tiny_config(lora=no_lora))
    assert not any("lora" in k for k in flat(params))
  with pytest.raises(ValueError, match="Unknown LoRA targets"):
    models.build_model(tiny_config(lora=dict(rank=2, alpha=1.0, targets=("qkv",))))


# Towers.

@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("pool", ["gap", "cls"])
def test_vit_shapes(image_size, pool):
  tower = vit.ViT(patch=8, width=16, depth=1, heads=2, mlp_dim=32, pool=pool)
  images = jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(tower.init, jax.random.key(0), images)
  tokens = (image_size // 8) ** 2 + (pool == "cls")
  assert variables["params"]["pos_embedding"].shape == (1, tokens, 16)
  assert ("cls" in variables["params"]) == (pool == "cls")
  assert jax.eval_shape(tower.apply, variables, images).shape == (2, 16)


@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("pool", ["flatten", "gap"])
def test_convnet_shapes(image_size, pool):
  tower = convnet.ConvNet(depth=2, width=8, pool=pool)
  images = jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32)
  out = jax.eval_shape(tower.apply, jax.eval_shape(tower.init, jax.random.key(0), images),
                       images)
  side = image_size // 4
  assert out.shape == ((2, side * side * 8) if pool == "flatten" else (2, 8))


# Dual encoder.

def test_dual_encoder_outputs(tiny):
  model, params = tiny
  images, text = batch()
  apply_fn = jax.jit(partition.make_apply_fn(model), static_argnames="train")
  img, txt, scale = apply_fn(params, {}, images, text)
  assert img.shape == txt.shape == (4, 16)
  np.testing.assert_allclose(jnp.linalg.norm(img, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(txt, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-6)
  img_only, none, _ = apply_fn(params, {}, images, None)
  assert none is None
  np.testing.assert_array_equal(img_only, img)
  # Dropout acts in training only.
  train_txt = apply_fn(params, {}, None, text, train=True, rng=jax.random.key(3))[1]
  assert not np.allclose(train_txt, txt)
  np.testing.assert_array_equal(apply_fn(params, {}, None, text)[1], txt)


def test_paper_text_head_matches_formula(tiny):
  model, params = tiny
  _, text = batch()
  head = params["txt_head"]
  dense = lambda x, p: x @ p["kernel"] + p["bias"]
  projected = dense(text, head["projection"])
  h = projected + dense(jax.nn.gelu(projected, approximate=False), head["fc"])
  mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
  norm = head["layer_norm"]
  h = (h - mu) / jnp.sqrt(var + 1e-5) * norm["scale"] + norm["bias"]
  expected = h / jnp.linalg.norm(h, axis=-1, keepdims=True)
  got = model.apply({"params": params}, text, method="embed_texts")
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_learned_temperature_and_no_image_head():
  config = tiny_config(learn_temperature=True, temperature=0.05, image_head="none",
                       text_head="linear")
  model, params = build(config)
  assert "img_head" not in params
  np.testing.assert_allclose(params["log_scale"], math.log(20.0), rtol=1e-6)
  trainable, frozen = models.split_params(params, "heads")
  assert set(flat(trainable)) == {"log_scale", "txt_head/projection/kernel",
                                  "txt_head/projection/bias"}
  images, text = batch()
  _, _, scale = jax.jit(models.make_apply_fn(model))(trainable, frozen, images, text)
  np.testing.assert_allclose(scale, 20.0, rtol=1e-5)
  with pytest.raises(ValueError, match="embed_dim"):
    param_shapes(tiny_config(image_head="none", embed_dim=24))


# Partition.

@pytest.mark.parametrize("mode", ["lora+heads", "heads", "all"])
def test_split_merge_round_trip(mode, tiny):
  _, params = tiny
  trainable, frozen = models.split_params(params, mode)
  t, f, p = flat(trainable), flat(frozen), flat(params)
  assert not t.keys() & f.keys() and t.keys() | f.keys() == p.keys()
  merged = flat(models.merge_params(trainable, frozen))
  assert merged.keys() == p.keys()
  assert all(merged[k] is p[k] for k in p)
  is_head = lambda k: k.startswith(("img_head/", "txt_head/"))
  is_lora = lambda k: k.endswith(("/lora_a", "/lora_b"))
  expected = {"lora+heads": {k for k in p if is_head(k) or is_lora(k)},
              "heads": {k for k in p if is_head(k)},
              "all": set(p)}[mode]
  assert set(t) == expected
  if mode == "lora+heads":
    assert not any(k.endswith("/kernel") and k.startswith("img/") for k in t)


def test_partition_errors():
  params = param_shapes(tiny_config(tower="convnet"))
  with pytest.raises(ValueError, match="no LoRA factors"):
    models.split_params(params, "lora+heads")
  with pytest.raises(ValueError, match="Unknown trainable mode"):
    models.split_params(params, "lora")
  trainable, frozen = models.split_params(params, "heads")
  with pytest.raises(ValueError, match="both trainable and frozen"):
    models.merge_params(trainable, params)


def test_gradients_flow_to_trainable_only(tiny):
  model, params = tiny
  trainable, frozen = models.split_params(params, "lora+heads")
  apply_fn = models.make_apply_fn(model)
  images, text = batch(n=6)

  @jax.jit
  def grads_fn(trainable, frozen):
    return jax.grad(lambda t: clip_loss(*apply_fn(t, frozen, images, text)))(trainable)

  grads = flat(grads_fn(trainable, frozen))
  assert grads.keys() == flat(trainable).keys()
  lora_b = [k for k in grads if k.endswith("lora_b")]
  lora_a = [k for k in grads if k.endswith("lora_a")]
  # B = 0 at init: B gets gradient through A, A none until B moves.
  assert all(np.abs(grads[k]).max() > 0 for k in lora_b)
  assert all(np.abs(grads[k]).max() == 0 for k in lora_a)
  stepped = jax.tree.map(lambda p, g: p - 1.0 * g, trainable, grads_fn(trainable, frozen))
  grads = flat(grads_fn(stepped, frozen))
  assert all(np.abs(grads[k]).max() > 0 for k in lora_a + lora_b)


# Hugging Face ViT.

HF_CONFIG = dict(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=16, patch_size=4, image_size=8, num_channels=3,
                 layer_norm_eps=1e-12, hidden_act="gelu", qkv_bias=True)


def hf_tensors(rng):
  d, m, p, c = 8, 16, 4, 3
  shapes = {"embeddings.cls_token": (1, 1, d), "embeddings.position_embeddings": (1, 5, d),
            "embeddings.patch_embeddings.projection.weight": (d, c, p, p),
            "embeddings.patch_embeddings.projection.bias": (d,),
            "layernorm.weight": (d,), "layernorm.bias": (d,)}
  for i in range(2):
    layer = f"encoder.layer.{i}."
    for name in ("attention.attention.query", "attention.attention.key",
                 "attention.attention.value", "attention.output.dense"):
      shapes.update({layer + name + ".weight": (d, d), layer + name + ".bias": (d,)})
    shapes.update({layer + "intermediate.dense.weight": (m, d),
                   layer + "intermediate.dense.bias": (m,),
                   layer + "output.dense.weight": (d, m),
                   layer + "output.dense.bias": (d,)})
    for name in ("layernorm_before", "layernorm_after"):
      shapes.update({layer + name + ".weight": (d,), layer + name + ".bias": (d,)})
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def hf_vit_forward(t, images):
  """Hugging Face ViTModel's last_hidden_state[:, 0], in float64 numpy."""
  t = {k: v.astype(np.float64) for k, v in t.items()}
  ln = lambda x, n: ((x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True)
                                                                + 1e-12) * t[n + ".weight"]
                     + t[n + ".bias"])
  linear = lambda x, n: x @ t[n + ".weight"].T + t[n + ".bias"]
  gelu = lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
  x = images.astype(np.float64).transpose(0, 3, 1, 2)  # NCHW, as PyTorch.
  b, c, h, w = x.shape
  patches = x.reshape(b, c, h // 4, 4, w // 4, 4)
  emb = np.einsum("bcyuxv,dcuv->byxd", patches,
                  t["embeddings.patch_embeddings.projection.weight"])
  emb = (emb + t["embeddings.patch_embeddings.projection.bias"]).reshape(b, -1, 8)
  x = np.concatenate([np.repeat(t["embeddings.cls_token"], b, 0), emb], 1)
  x = x + t["embeddings.position_embeddings"]
  for i in range(2):
    layer = f"encoder.layer.{i}."
    hx = ln(x, layer + "layernorm_before")
    q, k, v = (linear(hx, layer + "attention.attention." + n).reshape(b, 5, 2, 4)
               .transpose(0, 2, 1, 3) for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / 2.0
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, 5, 8)
    x = x + linear(ctx, layer + "attention.output.dense")
    hx = gelu(linear(ln(x, layer + "layernorm_after"), layer + "intermediate.dense"))
    x = x + linear(hx, layer + "output.dense")
  return ln(x, "layernorm")[:, 0]


@pytest.fixture(name="hf_dir")
def fixture_hf_dir(tmp_path):
  tensors = hf_tensors(np.random.default_rng(0))
  # A ViTForImageClassification-style file: `vit.` prefix plus a classifier.
  safetensors.numpy.save_file(
      {"vit." + k: v for k, v in tensors.items()} | {"classifier.weight": np.ones((3, 8))},
      str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
  return tmp_path, tensors


def test_load_hf_vit_matches_numpy_forward(hf_dir):
  path, tensors = hf_dir
  vit_config = hf_checkpoint.vit_config(str(path))
  config = tiny_config(vit=vit_config.to_dict(), embed_dim=8)
  model, params = build(config, image_size=8)
  params["img"] = models.load_hf_vit(str(path / "model.safetensors"), target=params["img"])
  assert "lora_a" in params["img"]["encoderblock_0"]["attention"]["q"]
  images = np.random.default_rng(1).normal(size=(3, 8, 8, 3)).astype(np.float32)
  tower = jax.jit(lambda p, x: model.apply({"params": p}, x, method=lambda m, x: m.img(x)))
  features = tower(params, jnp.asarray(images))
  np.testing.assert_allclose(features, hf_vit_forward(tensors, images),
                             rtol=1e-4, atol=1e-5)
  plain, grafted = flat(models.load_hf_vit(str(path))), flat(params["img"])
  assert plain.keys() == {k for k in grafted if "lora" not in k}
  for k, v in plain.items():
    np.testing.assert_array_equal(v, grafted[k])


def test_an_hf_tower_is_read_once_and_shared_by_every_student(hf_dir, monkeypatch):
  path, _ = hf_dir
  reads = []
  read = safetensors.numpy.load_file
  monkeypatch.setattr(safetensors.numpy, "load_file", lambda f: reads.append(f) or read(f))
  config = tiny_config(vit=hf_checkpoint.vit_config(str(path)).to_dict(), embed_dim=8)
  grafter = models.hf_vit_grafter(str(path))
  a, b = (trainer.init_student(config, jax.random.key(seed), (8, 8, 3), TEXT_DIM, grafter)
          for seed in (0, 1))
  assert len(reads) == 1
  # One copy of the tower for both (the row program's shared-frozen check
  # relies on it), each with its own LoRA factors.
  assert jax.tree.all(jax.tree.map(lambda x, y: x is y, a.frozen["img"], b.frozen["img"]))
  assert not np.array_equal(flat(a.trainable["img"])["encoderblock_0/attention/q/lora_a"],
                            flat(b.trainable["img"])["encoderblock_0/attention/q/lora_a"])
  for k, v in flat(models.load_hf_vit(str(path))).items():
    np.testing.assert_array_equal(flat(a.frozen["img"])[k], v, err_msg=k)


def test_load_hf_vit_errors(hf_dir, tmp_path):
  path, tensors = hf_dir
  del tensors["encoder.layer.1.output.dense.bias"]
  tensors["layernorm.weight"] = np.ones(7, np.float32)
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text(json.dumps(HF_CONFIG))
  safetensors.numpy.save_file(tensors, str(broken / "model.safetensors"))
  missing = r"missing 1 keys: \['encoder.layer.1.output.dense.bias'"
  with pytest.raises(ValueError, match=missing):
    models.load_hf_vit(str(broken))
  tensors["encoder.layer.1.output.dense.bias"] = np.zeros(8, np.float32)
  safetensors.numpy.save_file(tensors, str(broken / "model.safetensors"))
  with pytest.raises(ValueError, match=r"layernorm.weight is \(7,\), expected \(8,\)"):
    models.load_hf_vit(str(broken))
  # A target built for 16x16 images has 17 position embeddings, the checkpoint 5.
  config = tiny_config(vit=hf_checkpoint.vit_config(str(path)).to_dict(), embed_dim=8)
  params = param_shapes(config, image_size=16)
  with pytest.raises(ValueError, match=r"pos_embedding: checkpoint \(1, 5, 8\), target "
                                       r"\(1, 17, 8\)"):
    models.load_hf_vit(str(path), target=params["img"])
  params = param_shapes(tiny_config(vit=dict(patch=4, width=8, depth=2, heads=2, mlp_dim=16,
                                             pool="gap"), embed_dim=8), image_size=8)
  with pytest.raises(ValueError, match=r"no leaves \['cls'\]"):
    models.load_hf_vit(str(path), target=params["img"])


def test_a_bad_hugging_face_folder_is_named_with_what_is_wrong(hf_dir, tmp_path):
  path, tensors = hf_dir
  with pytest.raises(FileNotFoundError, match=r"Hugging Face ViT not found: /nonexistent/vit"):
    models.load_hf_vit("/nonexistent/vit")
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"bad/config.json is not valid JSON"):
    hf_checkpoint.vit_config(str(bad))
  (bad / "config.json").write_text(json.dumps(HF_CONFIG))
  with pytest.raises(FileNotFoundError, match=r"bad/model.safetensors not found"):
    models.load_hf_vit(str(bad))
  (bad / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(256))
  with pytest.raises(ValueError, match=r"bad/model.safetensors is not a readable "
                                       "safetensors file"):
    models.load_hf_vit(str(bad))
  tensors["layernorm.weight"] = np.full_like(tensors["layernorm.weight"], np.nan)
  safetensors.numpy.save_file(tensors, str(bad / "model.safetensors"))
  with pytest.raises(ValueError, match=r"non-finite values .* \['layernorm.weight'\]"):
    models.load_hf_vit(str(bad))


def test_the_default_lora_targets_are_every_kernel_the_vit_knows():
  # config_lib loads no model code, so it spells the ViT's kernel names itself.
  assert tuple(config_lib.model_config().lora.targets) == vit.LORA_TARGETS
