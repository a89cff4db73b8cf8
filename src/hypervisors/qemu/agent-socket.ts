// Where a QEMU VM's guest agent listens, asked of QEMU itself: the virtio serial port named
// org.qemu.guest_agent.0 (the name qemu-ga looks for in the guest) is attached to a chardev, and
// query-chardev gives that chardev's socket. Only a unix socket that QEMU listens on can be used
// by us; any other backend (a pty, a socket QEMU connects out to) is reported, not guessed at.
import type { QmpClient } from '../../protocols/qmp/client.js';
import { optional } from './inspect.js';

export const AGENT_PORT_NAME = 'org.qemu.guest_agent.0';

export type AgentSocket = { path: string } | { path?: undefined; why: string };

/** The unix socket path of a chardev's `filename` as query-chardev shows it, if QEMU listens there. */
export function listeningUnixPath(filename: string): string | undefined {
  // e.g. 'unix:/run/vm/qga.sock,server=on', 'disconnected:unix:/run/vm/qga.sock,server=on'
  const m = /^(?:disconnected:)?unix:([^,]+)((?:,[^,]*)*)$/.exec(filename.split(' <-> ')[0]!.trim());
  if (!m || !/(^|,)server(=on)?(,|$)/.test(m[2]!.slice(1))) return undefined;
  return m[1];
}

export async function findAgentSocket(qmp: QmpClient): Promise<AgentSocket> {
  let chardev: string | undefined;
  for (const parent of ['/machine/peripheral', '/machine/peripheral-anon']) {
    const children = (await optional(qmp.execute<{ name: string; type: string }[]>('qom-list', { path: parent }))) ?? [];
    for (const c of children) {
      if (c.type !== 'child<virtserialport>') continue;
      const path = `${parent}/${c.name}`;
      if ((await optional(qmp.execute<string>('qom-get', { path, property: 'name' }))) !== AGENT_PORT_NAME) continue;
      chardev = await optional(qmp.execute<string>('qom-get', { path, property: 'chardev' }));
      if (chardev) break;
    }
    if (chardev) break;
  }
  if (!chardev) return { why: `the VM has no virtio serial port named ${AGENT_PORT_NAME}` };
  const dev = ((await optional(qmp.execute<{ label: string; filename: string }[]>('query-chardev'))) ?? []).find((c) => c.label === chardev);
  if (!dev) return { why: `the agent's chardev '${chardev}' is not listed by QEMU` };
  const path = listeningUnixPath(dev.filename);
  return path ? { path } : { why: `the agent's chardev '${chardev}' is '${dev.filename}', not a unix socket QEMU listens on` };
}
