#!/usr/bin/env bash
# Multi-node training with torchrun (torch's own launcher; nothing home-made).
# Run the same command on every node, changing only NODE_RANK:
#
#   node 0: NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash deploy/train-multinode.sh \
#             --bank artifacts/mnist-5k/bank.safetensors --dataset mnist-5k:train --out runs/model.safetensors
#   node 1: NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash deploy/train-multinode.sh <same arguments>
#
# torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for each
# process; `python -m training train` reads them to join the process group.
# Arguments after the script name go to `python -m training train` unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-${JOB_COMPLETION_INDEX:-0}}"   # Indexed k8s Jobs set JOB_COMPLETION_INDEX
NPROC_PER_NODE="${NPROC_PER_NODE:-gpu}"   # "gpu": one process per visible GPU
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
PYTHON="${PYTHON:-python}"

exec "$PYTHON" -m torch.distributed.run \
  --nnodes "$NNODES" \
  --node-rank "$NODE_RANK" \
  --nproc-per-node "$NPROC_PER_NODE" \
  --master-addr "$MASTER_ADDR" \
  --master-port "$MASTER_PORT" \
  -m training train "$@"
