"""Evaluation students of other architectures (`evaluate.student`)."""
import json
import os

import jax
import pytest

from vldd_jax import backbone
from vldd_jax import evaluate
from vldd_jax import students
from vldd_jax import trainer
from vldd_jax import workdir_lib


def test_cross_architecture_students_score_the_set_with_their_own_model(distilled):
  config, workdir = distilled
  same = students.student_config(config)  # "same": the experts' model.
  assert same.to_dict() == config.to_dict() and same is not config
  shapes = {}
  for name in ("heads", "lora8", "all", "convnet"):
    config_s = config.copy_and_resolve_references()
    config_s.evaluate.student = name
    model = students.student_config(config_s).model
    student = trainer.init_student(model, jax.random.key(0), (32, 32, 3), 384,
                                   backbone.loader(students.student_config(config_s),
                                                   workdir))
    shapes[name] = {k: sum(x.size for x in jax.tree.leaves(v))
                    for k, v in student.trainable.items()}
  assert "img" not in shapes["heads"]  # A frozen tower: heads only.
  assert shapes["lora8"]["img"] == 2 * sum(  # Rank 8: twice the LoRA factors of rank 4.
      x.size for x in jax.tree.leaves(trainer.init_student(
          config.model, jax.random.key(0), (32, 32, 3), 384).trainable["img"]))
  assert shapes["all"]["img"] > shapes["lora8"]["img"]
  # A set scored by another architecture: a ConvNet from scratch.
  config_s = config.copy_and_resolve_references()
  config_s.evaluate.update(student="convnet", methods=("distilled", "random"))
  evaluate.run(config_s, workdir)
  rows = json.load(open(os.path.join(workdir, workdir_lib.RESULTS)))["rows"]
  assert [r["method"] for r in rows][1:3] == ["distilled", "random"]
  assert all(0 <= r["tr@1"] <= 100 for r in rows)
  config_s.evaluate.student = "resnet"
  with pytest.raises(ValueError, match=r"evaluate.student='resnet'"):
    evaluate.run(config_s, workdir)
