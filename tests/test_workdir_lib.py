"""The workdir's owner: its format stamp, and the sweep of what killed runs left."""
import json
import os

import pytest

from vldd_jax import config_lib
from vldd_jax import stages
from vldd_jax import workdir_lib
from vldd_jax.data import karpathy
from vldd_jax.data import shapes

from conftest import ROOT


def test_a_new_workdir_is_stamped_and_a_users_own_files_do_not_block_it(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  (tmp_path / "results.json").symlink_to(tmp_path / "notes.txt")  # Ours are never links.
  workdir_lib.claim(str(tmp_path))
  stamp = json.loads((tmp_path / workdir_lib.STAMP).read_text())
  assert stamp == {"format_version": workdir_lib.FORMAT_VERSION}
  (tmp_path / "experts").mkdir()
  workdir_lib.claim(str(tmp_path))  # Stamped: its outputs are of this format.


@pytest.mark.parametrize("content,made", [
    (None, r"an older vldd_jax, before workdir formats were recorded \(experts, "
           r"metrics.jsonl\)"),
    ({"format_version": 0}, "workdir format 0")])
def test_a_workdir_of_another_format_is_refused_before_any_stage_writes(
    tmp_path, content, made):
  (tmp_path / "experts").mkdir()
  (tmp_path / "metrics.jsonl").write_text("{}\n")
  if content is not None:
    (tmp_path / workdir_lib.STAMP).write_text(json.dumps(content))
  before = sorted(os.listdir(tmp_path))
  config = config_lib.load_config(os.path.join(ROOT, "configs/shapes.py:tiny"))
  config.stage = "data"
  with pytest.raises(ValueError, match=rf"{tmp_path} was made by {made}; this vldd_jax "
                                       rf"reads workdir format {workdir_lib.FORMAT_VERSION} "
                                       r"only\. Start a new workdir"):
    stages.run(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == sorted(before + [workdir_lib.LOCK])


def test_the_sweep_knows_the_builders_dataset_folders():
  assert workdir_lib.DATASETS == (shapes.Shapes.name, karpathy.Karpathy.name)


def _plant(root, paths: list[str]) -> None:
  """Writes a small file at each of `paths` under `root`, making its folders."""
  for path in paths:
    os.makedirs(os.path.dirname(root / path), exist_ok=True)
    (root / path).write_text("x")


def test_leftovers_of_interrupted_runs_are_removed_and_nothing_else(tmp_path):
  work = tmp_path / "work"
  uuid = "0123456789abcdef0123456789abcdef"
  leftovers = {  # What a killed run of each writer leaves: what the sweep removes.
      "tfds/shapes/tiny/incomplete.AB12CD_1.0.0/x.array_record":
          "tfds/shapes/tiny/incomplete.AB12CD_1.0.0",
      f"tfds/karpathy/.config/incomplete.{uuid}.metadata.json": None,
      "tfds/caption_embeddings/tiny-train-0123456789abcdef.npy.tmp": None,
      "compare.md.tmp": None, "workdir.json.tmp": None, "distill/n8/synthetic_grid.png.tmp": None,
      "config_data.json.tmp": None, "results.json.tmp": None,
      "results_0123456789ab.json.tmp": None, "compare.json.tmp": None,
      "pretrain/summary.json.tmp": None,
      "pretrain/ckpt/5.orbax-checkpoint-tmp/tower/x": "pretrain/ckpt/5.orbax-checkpoint-tmp",
      "experts/expert_000/manifest.json.tmp": None,
      "experts/expert_000/ckpt/3.orbax-checkpoint-tmp-1700000000/params/x":
          "experts/expert_000/ckpt/3.orbax-checkpoint-tmp-1700000000",
      "distill/n8/distilled.npz.tmp": None, "distill/n8/settings.json.tmp": None,
      "distill/n8_lowrank/ckpt/4.orbax-checkpoint-tmp/state/x":
          "distill/n8_lowrank/ckpt/4.orbax-checkpoint-tmp"}
  kept = ["tfds/shapes/tiny/1.0.0/x.array_record", "distill/n8/distilled.npz",
          "distill/n8/settings.json", "experts/expert_000/ckpt/3/params/x", ".lock",
          # A user's files with those suffixes, anywhere the project does not write them.
          "notes.tmp", "old.tmp.npz", "tfds/caption_embeddings/tmpq1w2_e3r.tmp",
          "incomplete.draft/x", "3.orbax-checkpoint-tmp/x",
          "mine/results.json.tmp", "mine/incomplete.AB12CD_1.0.0/x",
          "mine/ckpt/3.orbax-checkpoint-tmp/x", "experts/notes.tmp",
          "experts/expert_000/notes.tmp", "experts/expert_000/ckpt/notes.tmp",
          "experts/expert_000_backup/manifest.json.tmp",
          "experts/expert_000_backup/ckpt/3.orbax-checkpoint-tmp/x",
          "distill/n8/notes.tmp", "distill/mine/settings.json.tmp",
          "tfds/caption_embeddings/notes.tmp", "tfds/mine/tiny/incomplete.AB12CD_1.0.0/x"]
  _plant(work, [*leftovers, *kept])
  # Links named as leftovers, or on the way to them: neither followed nor removed.
  _plant(tmp_path / "elsewhere", ["manifest.json.tmp", "3.orbax-checkpoint-tmp/x", "a.tmp/x"])
  links = {"linked.tmp": "a.tmp", "experts/expert_001": ".",
           "experts/expert_000/ckpt/4.orbax-checkpoint-tmp": "3.orbax-checkpoint-tmp",
           "config_pipeline.json.tmp": "manifest.json.tmp",
           "tfds/caption_embeddings/x-0123456789abcdef.json.tmp": "manifest.json.tmp"}
  for link, target in links.items():
    (work / link).symlink_to(tmp_path / "elsewhere" / target)
  removed = workdir_lib.remove_leftovers(str(work))
  assert sorted(os.path.relpath(p, work) for p in removed) == sorted(
      folder or path for path, folder in leftovers.items())
  assert all((work / path).exists() for path in kept)
  assert all((work / link).is_symlink() for link in links)
  assert sorted(str(p.relative_to(tmp_path / "elsewhere"))
                for p in (tmp_path / "elsewhere").rglob("*")) == [
                    "3.orbax-checkpoint-tmp", "3.orbax-checkpoint-tmp/x", "a.tmp", "a.tmp/x",
                    "manifest.json.tmp"]

