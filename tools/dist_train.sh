#!/usr/bin/env bash
# Multi-GPU training, mmdet3d style:  bash tools/dist_train.sh CONFIG NGPUS [train.py options...]
# Multi-node: run this on every node with NNODES, NODE_RANK, MASTER_ADDR (and PORT) set.
# Under SLURM, srun python tools/train.py CONFIG --devices NGPUS --num-nodes N works directly.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash tools/dist_train.sh CONFIG NGPUS [tools/train.py options ...]" >&2
    exit 2
fi
CONFIG=$1
NGPUS=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
DIR="$(cd "$(dirname "$0")/.." && pwd)"
PYTHONPATH="$DIR:${PYTHONPATH:-}" exec python -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NGPUS" \
    --master_addr="$MASTER_ADDR" --master_port="$PORT" \
    "$DIR/tools/train.py" "$CONFIG" --devices "$NGPUS" --num-nodes "$NNODES" --accelerator gpu "$@"
