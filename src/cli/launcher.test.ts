import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { launcherFlags } from './launcher.js';

const BIN = fileURLToPath(new URL('../../bin/bulwark.js', import.meta.url));

/** The size V8 gives its young generation's space after a burst of allocation (semi-spaces grow with survival). */
function newSpaceMiB(flags: string[]): number {
  const script =
    "const v8 = require('node:v8'); const keep = [];" +
    "for (let i = 0; i < 2e6; i++) { keep.push({ a: i, b: 'x' + i }); if (keep.length > 200000) keep.splice(0, 100000); }" +
    "console.log(v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size / 1048576);";
  const r = spawnSync(process.execPath, [...flags, '-e', script], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  return Number(r.stdout.trim());
}

describe('launcher flags', () => {
  it("are read from the launcher's first line", () => {
    const flags = launcherFlags(BIN);
    expect(flags).toContain('--max-semi-space-size=4');
    expect(flags.every((f) => f.startsWith('--'))).toBe(true);
  });

  it("keep V8's young generation small (V8's own heap statistics; without them it grows)", () => {
    expect(newSpaceMiB(launcherFlags(BIN))).toBeLessThanOrEqual(8);
    expect(newSpaceMiB([])).toBeGreaterThan(8);
  });

  it('an older launcher has none; anything else is refused', () => {
    const dir = mkdtempSync(join(tmpdir(), 'bulwark-launcher-'));
    try {
      writeFileSync(join(dir, 'old.js'), "#!/usr/bin/env node\nimport '../dist/cli/main.js';\n");
      expect(launcherFlags(join(dir, 'old.js'))).toEqual([]);
      writeFileSync(join(dir, 'odd.js'), '#!/usr/bin/env -S node --a=1; rm -rf /\n');
      expect(() => launcherFlags(join(dir, 'odd.js'))).toThrow(/does not start with/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
