#!/usr/bin/env bash
# Register every deployment of prefect.yaml with the Prefect API in PREFECT_API_URL: Prefect's
# standard `prefect --no-prompt deploy --all`, from the project root. prefect.yaml has a default
# for every setting; NEUROSEG_ROOT, NEUROSEG_UPLOAD_DEBOUNCE and NEUROSEG_PROJECT_DIR, where set,
# override them (see the top of prefect.yaml). Extra arguments go to `prefect deploy`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec prefect --no-prompt deploy --all "$@"
