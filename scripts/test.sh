#!/usr/bin/env bash
# The whole test suite, as README and CI run it: system packages, build, typecheck, lint + layer rules, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-setup.sh
[[ -d node_modules ]] || npm ci
npm run build
npm run typecheck
npm run lint
npx vitest run "$@"
