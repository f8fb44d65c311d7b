#!/usr/bin/env bash
# Set up everything and run every test tier: unit, api, lab (root), deploy (real Prefect server).
# Lab and deploy tests never skip silently: a missing lab fails the run and says why.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
PYTEST=(.venv/bin/python -m pytest -ra -p no:cacheprovider)

# Tests get a Prefect home of their own, so they never touch the product's database.
home() { mktemp -d /tmp/dapx-test-prefect.XXXXXX; }

if [ "$#" -gt 0 ]; then  # arguments pass through to pytest (a tier, a file, -k ...)
  export PREFECT_HOME=${PREFECT_HOME:-$(home)}
  exec "${PYTEST[@]}" --durations=15 "$@"
fi

# Every tier. What needs no lab (the unit and api tiers, and the deploy tests that use only a
# Prefect server) runs beside what does (which mostly waits on nodes, transfers and servers),
# each side with a Prefect home of its own; its report follows the other's.
NO_LAB_DEPLOY=(tests/deploy/test_api_auth.py tests/deploy/test_cli_without_lab.py tests/deploy/test_locks.py
               tests/deploy/test_prefect_yaml.py)
quick_log=$(mktemp /tmp/dapx-test-quick.XXXXXX)
PREFECT_HOME=$(home) "${PYTEST[@]}" tests/unit tests/api "${NO_LAB_DEPLOY[@]}" \
  >"$quick_log" 2>&1 &
quick=$!
trap 'kill "$quick" 2>/dev/null || true' EXIT  # interrupted: stop that side too
lab_status=0
PREFECT_HOME=$(home) "${PYTEST[@]}" --durations=15 tests/lab tests/deploy \
  "${NO_LAB_DEPLOY[@]/#/--ignore=}" || lab_status=$?
quick_status=0
wait "$quick" || quick_status=$?
echo
echo "================ unit, api and the deploy tests without the lab ================"
cat "$quick_log"
rm -f "$quick_log"
echo "lab and deploy tiers: exit $lab_status; the tests without the lab: exit $quick_status"
[ "$lab_status" -eq 0 ] && [ "$quick_status" -eq 0 ]
