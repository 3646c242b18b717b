#!/usr/bin/env bash
# Register every deployment of prefect.yaml with the Prefect API in PREFECT_API_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
export NEUROSEG_PROJECT_DIR="${NEUROSEG_PROJECT_DIR:-$(pwd)}"
export NEUROSEG_ROOT="${NEUROSEG_ROOT:-$(pwd)/neuroseg-data}"
prefect --no-prompt deploy --all
