#!/usr/bin/env bash
# Start a process worker on a GPU host (training). Pin one GPU per worker with
# CUDA_VISIBLE_DEVICES=N before calling this; TensorFlow uses it when it sees it.
set -euo pipefail
cd "$(dirname "$0")/.."
exec prefect worker start --pool gpu --type process "$@"
