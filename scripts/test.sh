#!/usr/bin/env bash
# The whole test suite, as README and CI run it: system packages, build, typecheck, lint + layer rules, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=system-node.sh
. scripts/system-node.sh
echo "== tests on Node $(node --version) (the machine's own)"
bash scripts/test-setup.sh
[[ -d node_modules ]] || npm ci
npm run build
npm run typecheck
npm run lint
# Not through npx: npx puts node_modules/.bin first on PATH again, and vitest would run on the
# node22 devDependency's `node` (so would every test, and the CLI they start).
node node_modules/vitest/vitest.mjs run "$@"

# The CLI on the other supported Node versions (binaries from the lockfile: devDependencies node22/node24),
# live VM backups included: the guardians run on the CLI's Node too.
if [[ $# -eq 0 ]]; then
  for v in 22 24; do
    echo "== end-to-end tests with the CLI on Node $("node_modules/node$v/bin/node" --version)"
    BULWARK_TEST_NODE="$PWD/node_modules/node$v/bin/node" node node_modules/vitest/vitest.mjs run test/e2e/files.test.ts test/e2e/disk.test.ts test/e2e/keys.test.ts test/e2e/hostile.test.ts test/e2e/vm-backup.test.ts
  done
fi
