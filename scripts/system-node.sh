# Sourced by scripts/test.sh and scripts/demo.sh. npm puts node_modules/.bin first on PATH, and the
# node22/node24 devDependencies (used to test the CLI on those versions) put a `node` there: without
# this, every npm script would run on Node 22 and the machine's own Node (the supported minimum, 20)
# would never be tested. The machine's node goes first on PATH again, through a one-link folder.
system_node() {
  local n=${npm_node_execpath:-}
  if [[ -z $n || $n == */node_modules/* ]]; then
    n=$(PATH=$(tr ':' '\n' <<<"$PATH" | grep -v node_modules | paste -sd:) command -v node)
  fi
  printf '%s\n' "$n"
}
SYSTEM_NODE=$(system_node)
mkdir -p .cache/system-node
ln -sfn "$SYSTEM_NODE" .cache/system-node/node
export PATH="$PWD/.cache/system-node:$PATH"
