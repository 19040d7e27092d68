"""What every benchmark records: the machine it ran on, and where results go."""
import contextlib
import json
import os
import platform
import resource
import subprocess
from collections.abc import Iterator

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
# Precedes the JSON a benchmark child process prints for its parent.
RESULT_MARKER = "RESULT_JSON="


def _cpu() -> dict:
  """The CPU's model name and widest vector extension, from /proc/cpuinfo: this
  project's machines differ between sessions (AVX2 or AVX-512)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      info = dict(line.split(":", 1) for line in f if ":" in line)
  except OSError:
    return {}
  info = {k.strip(): v.strip() for k, v in info.items()}
  flags = set(info.get("flags", "").split())
  vector = next((v for v in ("avx512f", "avx2", "avx") if v in flags), "")
  return {"cpu_model": info.get("model name", ""), "cpu_vector": vector}


def machine() -> dict:
  """The hardware and software a measurement was taken on."""
  return {
      "cpu_count": os.cpu_count(),
      "processor": platform.processor() or platform.machine(),
      **_cpu(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "devices": [d.device_kind for d in jax.devices()],
      "load_average_1min": os.getloadavg()[0],
  }


def peak_rss_mib() -> float:
  """This process's peak resident memory so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write(name: str, result: dict, table: str | None = None) -> None:
  """Writes results/<name>.json (and <name>.md with `table`), prints both."""
  os.makedirs(RESULTS_DIR, exist_ok=True)
  with open(os.path.join(RESULTS_DIR, f"{name}.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))
  if table is not None:
    with open(os.path.join(RESULTS_DIR, f"{name}.md"), "w", encoding="utf-8") as f:
      f.write(table + "\n")
    print(table)


def gflop(compiled) -> float:
  """GFLOP of one run of a compiled program, from XLA's cost analysis (a dict,
  or a one-element list of dicts in older JAX)."""
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"] / 1e9


def emit(result: dict) -> None:
  """What a benchmark child process prints for `child_result` to read."""
  print(RESULT_MARKER + json.dumps(result))


def child_result(cmd: list[str], cwd: str | None = None, env: dict | None = None) -> dict:
  """Runs a benchmark child process; the JSON it printed after `RESULT_MARKER`
  (or, for a foreign command, its last line)."""
  out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd,
                       env=env).stdout
  return json.loads(out.split(RESULT_MARKER)[-1].strip().splitlines()[-1])


def head_commit() -> str:
  """This tree's commit, short."""
  return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                        capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def worktree(commit: str | None, folder: str) -> Iterator[str | None]:
  """`commit` checked out (detached, `git worktree`) at `folder` for the block,
  which a baseline's runs import from; removed after. None: nothing, None."""
  if commit is None:
    yield None
    return
  subprocess.run(["git", "worktree", "add", "--detach", folder, commit], cwd=ROOT,
                 check=True, capture_output=True)
  try:
    yield folder
  finally:
    subprocess.run(["git", "worktree", "remove", "--force", folder], cwd=ROOT,
                   check=False, capture_output=True)
