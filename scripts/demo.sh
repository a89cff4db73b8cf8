#!/usr/bin/env bash
# The quick start's main job on an embedded default: back up a folder into a local repository it
# creates, list the restore point, restore it, and verify the restored copy.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -f dist/cli/main.js ]] || npm run build --silent

demo=${BULWARK_DEMO_DIR:-$PWD/.cache/demo}
src=${1:-/etc}
export BULWARK_REPOSITORY=$demo/repo
export BULWARK_PASSWORD=${BULWARK_PASSWORD:-demo-password-change-me}
bulwark() { node bin/bulwark.js "$@"; }

mkdir -p "$demo"
if [[ ! -f $BULWARK_REPOSITORY/config ]]; then
  echo "== bulwark init   ($BULWARK_REPOSITORY, password from BULWARK_PASSWORD)"
  bulwark init
fi
echo "== bulwark backup files $src"
# Unreadable items (exit 3) are listed in the summary; the demo goes on.
bulwark backup files "$src" --tag demo || [[ $? -eq 3 ]]
echo "== bulwark snapshots"
bulwark snapshots
rm -rf "$demo/restore"
echo "== bulwark restore latest --target $demo/restore --verify"
bulwark restore latest --target "$demo/restore" --verify || [[ $? -eq 3 ]]
echo
echo "Restored into $demo/restore$src. Try: node bin/bulwark.js --repo $BULWARK_REPOSITORY ls latest"
