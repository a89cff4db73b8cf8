// Temporary folders that belong to one process, named with its host and pid, so that the folders a
// killed process left behind (SIGKILL, power loss) are found and removed by the next one on the same
// host. Only folders of this host are judged: in a repository shared over the network, another host's
// process cannot be seen from here.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
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

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Makes `<root>/<prefix><pid>@<host>-XXXXXX`, first removing this host's folders whose process is gone. */
export function makeProcessTempDir(prefix: string, root = tmpdir()): string {
  const host = hostname().replace(/[^A-Za-z0-9.-]/g, '_');
  // Anchored at both ends: host "a" must not take "a-7"'s folders for its own.
  const pattern = new RegExp(`^${escape(prefix)}(\\d+)@${escape(host)}-[A-Za-z0-9]{6}$`);
  try {
    for (const name of readdirSync(root)) {
      const m = pattern.exec(name);
      if (m && Number(m[1]) !== process.pid && !processAlive(Number(m[1]))) rmSync(join(root, name), { recursive: true, force: true });
    }
  } catch {
    // another user's folder, or another process cleaning up at the same time: not ours to worry about
  }
  return mkdtempSync(join(root, `${prefix}${process.pid}@${host}-`));
}
