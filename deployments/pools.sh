#!/usr/bin/env bash
# Create the two process work pools and the GPU concurrency limit (idempotent).
set -euo pipefail
prefect work-pool inspect cpu >/dev/null 2>&1 || prefect work-pool create cpu --type process
prefect work-pool inspect gpu >/dev/null 2>&1 || prefect work-pool create gpu --type process
# One GPU step at a time per GPU: tasks tagged "gpu" share this slot.
prefect concurrency-limit create gpu "${NEUROSEG_GPU_SLOTS:-1}" >/dev/null 2>&1 || true
echo "pools: cpu, gpu; concurrency limit 'gpu' = ${NEUROSEG_GPU_SLOTS:-1}"
