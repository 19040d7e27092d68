"""Tests for launch/tpu_vm.sh: the gcloud commands it prints and runs, with a fake gcloud."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "tpu_vm.sh")
GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]
RUN_ARGS = ["--config=configs/shapes.py:tiny", "--workdir=/tmp/vldd w"]

# A gcloud that appends its arguments, as one JSON list per line, to RECORD and exits CODE.
FAKE_GCLOUD = """#!{python} -IS
import json, sys
with open({record!r}, "a") as f:
  f.write(json.dumps(["gcloud"] + sys.argv[1:]) + "\\n")
sys.exit({code})
"""

DEFAULTS = {"name": "vldd-tpu", "zone": "us-central2-b", "type": "v4-8",
            "version": "tpu-ubuntu2204-base", "project": None}
CUSTOM = {"name": "my-pod", "zone": "europe-west4-a", "type": "v4-32",
          "version": "v2-alpha-tpuv5", "project": "my-project"}
FLAGS = ["--name=my-pod", "--zone", "europe-west4-a", "--accelerator-type=v4-32",
         "--version", "v2-alpha-tpuv5", "--project=my-project"]
ENV = {"TPU_NAME": "my-pod", "TPU_ZONE": "europe-west4-a", "TPU_TYPE": "v4-32",
       "TPU_RUNTIME": "v2-alpha-tpuv5", "GCP_PROJECT": "my-project"}
OTHER_ENV = {"TPU_NAME": "env-name", "TPU_ZONE": "env-zone", "TPU_TYPE": "env-type",
             "TPU_RUNTIME": "env-version", "GCP_PROJECT": "env-project"}
# Where the settings come from: (environment, flags, the settings that result).
SOURCES = {
    "defaults": ({}, [], DEFAULTS),
    "flags": ({}, FLAGS, CUSTOM),
    "env": (ENV, [], CUSTOM),
    "flags_over_env": (OTHER_ENV, FLAGS, CUSTOM),
}
COMMANDS = {"create": [], "setup": [], "run": ["--", *RUN_ARGS], "logs": [], "delete": []}


def _readme_setup() -> str:
  """The set-up command that README.md marks with `<!-- setup -->`."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    match = re.search(r"<!-- setup -->\s*```bash\n(.+?)\n```", f.read(), re.S)
  assert match, "README.md has no <!-- setup --> block"
  return match.group(1).strip()


class Command:
  """Equals an argument `--command=S` where `parts` occur in S in this order."""

  def __init__(self, *parts: str):
    self.parts = parts

  def __eq__(self, other):
    if not isinstance(other, str) or not other.startswith("--command="):
      return False
    pos = 0
    for part in self.parts:
      pos = other.find(part, pos)
      if pos < 0:
        return False
      pos += len(part)
    return True

  def __repr__(self):
    return f"Command{self.parts!r}"


def expected_calls(command: str, s: dict) -> list[list]:
  """The gcloud argument lists `command` should make with the settings `s`."""
  zone = f"--zone={s['zone']}"
  project = [f"--project={s['project']}"] if s["project"] else []
  ssh_all = [*GCLOUD, "ssh", s["name"], zone, "--worker=all"]
  if command == "create":
    return [[*GCLOUD, "create", s["name"], zone, f"--accelerator-type={s['type']}",
             f"--version={s['version']}", *project]]
  if command == "setup":
    install = Command("~/venv", ". ~/venv/bin/activate && cd ~/vldd_jax && "
                      + _readme_setup() + ' && pip install "jax[tpu]"')
    return [[*ssh_all, "--command=rm -rf ~/vldd_jax", *project],
            [*GCLOUD, "scp", "--recurse", ROOT, f"{s['name']}:~/vldd_jax", zone,
             "--worker=all", *project],
            [*ssh_all, install, *project]]
  if command == "run":
    start = Command("cd ~/vldd_jax && . ~/venv/bin/activate && nohup python -m vldd_jax.main ",
                    r"--config=configs/shapes.py:tiny --workdir=/tmp/vldd\ w",  # printf %q
                    " --config.multihost=True > ~/vldd_run.log 2>&1", "&")
    return [[*ssh_all, start, *project]]
  if command == "logs":
    return [[*GCLOUD, "ssh", s["name"], zone, "--worker=0",
             "--command=tail -n 100 ~/vldd_run.log", *project]]
  assert command == "delete"
  return [[*GCLOUD, "delete", s["name"], zone, "--quiet", *project]]


@pytest.fixture
def gcloud(tmp_path):
  """make(code, env) -> (environment with a fake gcloud first on PATH, its record file)."""
  def make(code: int = 0, env: dict | None = None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "gcloud_calls.jsonl"
    fake = bin_dir / "gcloud"
    fake.write_text(FAKE_GCLOUD.format(python=sys.executable, record=str(record), code=code))
    fake.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if k not in ENV}
    clean["PATH"] = f"{bin_dir}{os.pathsep}{clean.get('PATH', '')}"
    return {**clean, **(env or {})}, record
  return make


def tpu_vm(env: dict, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", SCRIPT, *args], env=env, capture_output=True, text=True,
                        timeout=30)


def recorded(record) -> list[list[str]]:
  return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def printed(stdout: str) -> list[list[str]]:
  """The commands a --dry-run printed, one `+ `-prefixed shell-quoted line each."""
  lines = stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), stdout
  return [shlex.split(line[2:]) for line in lines]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("command", COMMANDS)
def test_dry_run_prints_commands_and_runs_nothing(gcloud, command, source):
  env, flags, settings = SOURCES[source]
  env, record = gcloud(code=1, env=env)  # any call would leave a record and fail
  result = tpu_vm(env, "--dry-run", command, *flags, *COMMANDS[command])
  assert result.returncode == 0, result.stderr
  assert printed(result.stdout) == expected_calls(command, settings)
  assert not record.exists(), "--dry-run ran gcloud"


@pytest.mark.parametrize("source", ["defaults", "flags_over_env"])  # the rest: dry-run
@pytest.mark.parametrize("command", COMMANDS)
def test_calls_gcloud_with_expected_arguments(gcloud, command, source):
  env, flags, settings = SOURCES[source]
  env, record = gcloud(code=0, env=env)
  result = tpu_vm(env, *flags, command, *COMMANDS[command])
  assert result.returncode == 0, result.stderr
  assert recorded(record) == expected_calls(command, settings)


def _remote(call: list[str]) -> str:
  (command,) = [a[len("--command="):] for a in call if a.startswith("--command=")]
  return command


def test_run_passes_awkward_args_verbatim_to_every_worker(gcloud):
  env, record = gcloud()
  args = ["--config=configs/shapes.py:tiny", "--workdir=/tmp/a b", "$HOME", "it's", "x;y"]
  assert tpu_vm(env, "run", "--", *args).returncode == 0
  (call,) = recorded(record)
  assert "--worker=all" in call
  remote = _remote(call)
  assert subprocess.run(["bash", "-n", "-c", remote]).returncode == 0
  words = shlex.split(remote)
  start = words.index("vldd_jax.main") + 1
  assert words[start:start + len(args) + 1] == [*args, "--config.multihost=True"]


def test_remote_commands_are_valid_bash(gcloud):
  env, record = gcloud()
  for command in COMMANDS:
    assert tpu_vm(env, command, *COMMANDS[command]).returncode == 0
  for call in recorded(record):
    if call[4] == "ssh":
      remote = _remote(call)
      assert subprocess.run(["bash", "-n", "-c", remote]).returncode == 0, remote


def test_options_spot_repo_worker(gcloud):
  env, record = gcloud(code=1)
  create = printed(tpu_vm(env, "--dry-run", "--spot", "create").stdout)
  assert create == [expected_calls("create", DEFAULTS)[0] + ["--spot"]]
  logs = printed(tpu_vm(env, "--dry-run", "logs", "--worker", "3").stdout)
  assert logs[0][:8] == [*GCLOUD, "ssh", "vldd-tpu", "--zone=us-central2-b", "--worker=3"]
  url = "https://example.com/me/vldd_jax.git"
  setup = printed(tpu_vm(env, "--dry-run", "setup", f"--repo={url}").stdout)
  assert [call[4] for call in setup] == ["ssh", "ssh"]  # no scp
  assert _remote(setup[0]) == f"rm -rf ~/vldd_jax && git clone {url} ~/vldd_jax"
  assert setup[1] == expected_calls("setup", DEFAULTS)[2]
  assert not record.exists()


def test_help(gcloud):
  env, _ = gcloud()
  result = tpu_vm(env, "--help")
  assert result.returncode == 0 and "Usage:" in result.stdout
  for word in [*COMMANDS, "--dry-run", "TPU_NAME", "GCP_PROJECT"]:
    assert word in result.stdout


@pytest.mark.parametrize("args, named", [
    (["frobnicate"], "frobnicate"),
    (["--frobnicate", "create"], "--frobnicate"),
    (["create", "--frob=1"], "--frob"),
    (["create", "--zone"], "--zone"),
    (["logs", "--worker=x"], "--worker"),
    (["run"], "run"),
    ([], "command"),
])
def test_bad_usage_exits_2_naming_it(gcloud, args, named):
  env, record = gcloud(code=1)
  result = tpu_vm(env, *args)
  assert result.returncode == 2, result
  assert named in result.stderr
  assert not record.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_failing_gcloud_fails_the_script(gcloud, command):
  env, record = gcloud(code=1)
  result = tpu_vm(env, command, *COMMANDS[command])
  assert result.returncode != 0
  assert len(recorded(record)) == 1  # setup stops at its first failure
