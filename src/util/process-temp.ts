// Temporary folders that belong to one process, named with its pid, so that the folders a killed
// process left behind (SIGKILL, power loss) are found and removed by the next one.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Whether a process with this id is running (on this host). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Makes `<root>/<prefix><pid>-XXXXXX`, first removing folders of that prefix whose process is gone. */
export function makeProcessTempDir(prefix: string, root = tmpdir()): string {
  const pattern = new RegExp(`^${prefix}(\\d+)-`);
  try {
    for (const name of readdirSync(root)) {
      const m = pattern.exec(name);
      if (m && Number(m[1]) !== process.pid && !processAlive(Number(m[1]))) rmSync(join(root, name), { recursive: true, force: true });
    }
  } catch {
    // another user's folder, or another process cleaning up at the same time: not ours to worry about
  }
  return mkdtempSync(join(root, `${prefix}${process.pid}-`));
}
