#!/usr/bin/env bash
# Start a process worker for CPU work (ingest, prepare, evaluate, nightly inference).
set -euo pipefail
cd "$(dirname "$0")/.."
exec prefect worker start --pool cpu --type process "$@"
