#!/usr/bin/env bash
# Register every deployment of prefect.yaml with the Prefect API in PREFECT_API_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
export NEUROSEG_PROJECT_DIR="${NEUROSEG_PROJECT_DIR:-$(pwd)}"
export NEUROSEG_ROOT="${NEUROSEG_ROOT:-$(pwd)/neuroseg-data}"
# Uploads trigger the nightly deployment for their plate after this delay (ISO 8601 duration);
# more uploads of the plate within it join that run.
export NEUROSEG_UPLOAD_DEBOUNCE="${NEUROSEG_UPLOAD_DEBOUNCE:-PT1M}"
prefect --no-prompt deploy --all
