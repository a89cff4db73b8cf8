// The Node flags Bulwark runs with. They live on the launcher's first line (bin/bulwark.js), the only
// place they can take effect for the `bulwark` command: a heap's sizes are fixed when Node starts.
// Whatever starts the CLI itself (the server's job runs, the benchmarks, the tests) reads them from
// there, so every run of the CLI has the same heap.
import { readFileSync } from 'node:fs';

/** The launcher's interpreter line: `#!/usr/bin/env -S node <flags>`. */
const SHEBANG = /^#!\/usr\/bin\/env -S node((?: --[a-z0-9-]+(?:=[a-z0-9]+)?)*)$/;

/**
 * The Node flags on the first line of the launcher at `bin` (docs/performance.md, Memory): an empty
 * list for a launcher without any (an older build's `#!/usr/bin/env node`).
 */
export function launcherFlags(bin: string): string[] {
  const first = readFileSync(bin, 'utf8').split('\n', 1)[0]!;
  if (first === '#!/usr/bin/env node') return [];
  const m = SHEBANG.exec(first);
  if (!m) throw new Error(`${bin} does not start with '#!/usr/bin/env -S node' and Node flags: '${first}'`);
  return m[1]!.trim().split(' ').filter(Boolean);
}
