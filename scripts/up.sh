#!/usr/bin/env bash
# Set up everything and run the product: Prefect server (embedded SQLite) with its UI on
# http://127.0.0.1:4200, DAPX blocks and deployments, a worker, and the lab when no real
# nodes are configured (root). Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/dapx up "$@"
