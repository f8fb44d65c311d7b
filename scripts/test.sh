#!/usr/bin/env bash
# Set up everything and run every test tier: unit, api, lab (root), deploy (real Prefect server).
# Lab and deploy tests never skip silently: a missing lab fails the run and says why.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Tests get a Prefect home of their own, so they never touch the product's database.
export PREFECT_HOME=${PREFECT_HOME:-$(mktemp -d /tmp/dapx-test-prefect.XXXXXX)}
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# Arguments pass through to pytest; without a test path, pyproject's testpaths (every tier) runs.
exec .venv/bin/python -m pytest -ra --durations=15 -p no:cacheprovider "$@"
