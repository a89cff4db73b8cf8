// A real libvirtd from Debian's packages for the libvirt tests (scripts/test-setup.sh installs it).
// No systemd here: the daemons are started by hand (virtlogd -d; libvirtd -d) unless one already
// answers on the system socket, and stopped again if this helper started them. The test guest is
// defined as a TCG domain (<domain type='qemu'>) on its kernel, initramfs and a data disk.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import net from 'node:net';
import { promisify } from 'node:util';
import { ensureGuestBuilt } from '../guest/guest.js';

const run = promisify(execFile);
const SOCKET = '/run/libvirt/libvirt-sock';
export const URI = 'qemu:///system';

function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ path });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

async function pidOf(file: string): Promise<number | undefined> {
  const n = Number((await readFile(file, 'utf8').catch(() => '')).trim());
  return n > 0 ? n : undefined;
}

/** A running libvirtd; `stop` ends the daemons only if this call started them. */
export async function ensureLibvirtd(): Promise<{ stop(): Promise<void> }> {
  if (await answers(SOCKET)) return { stop: async () => undefined };
  if (!existsSync('/usr/sbin/libvirtd')) throw new Error('libvirtd is not installed: run scripts/test-setup.sh (package libvirt-daemon-system)');
  for (const d of ['/run/libvirt', '/var/log/libvirt', '/var/lib/libvirt', '/var/cache/libvirt']) await mkdir(d, { recursive: true });
  await run('virtlogd', ['-d']).catch(() => undefined); // already running is fine
  await run('libvirtd', ['-d']);
  const end = Date.now() + 30_000;
  while (!(await answers(SOCKET))) {
    if (Date.now() > end) throw new Error(`libvirtd started but ${SOCKET} does not answer after 30 s (see /var/log/libvirt/libvirtd.log)`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    async stop() {
      for (const f of ['/run/libvirtd.pid', '/run/virtlogd.pid']) {
        const pid = await pidOf(f);
        if (pid) {
          try {
            process.kill(pid, 'SIGTERM');
          } catch {
            // gone already
          }
        }
      }
    },
  };
}

export async function virsh(...args: string[]): Promise<string> {
  return (await run('virsh', ['-c', URI, ...args], { maxBuffer: 16 * 1024 * 1024 })).stdout;
}

/** The test guest as a libvirt domain: TCG, its data disk as vda, console to a file, the agent channel. */
export async function guestDomainXml(opts: { name: string; disk: string; format: 'qcow2' | 'raw'; consoleLog: string; writerKiB?: number; extraDisks?: { path: string; format: 'qcow2' | 'raw'; target: string }[] }): Promise<string> {
  const img = await ensureGuestBuilt();
  const disks = [{ path: opts.disk, format: opts.format, target: 'vda' }, ...(opts.extraDisks ?? [])];
  return `<domain type='qemu'>
  <name>${opts.name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>${img.kernel}</kernel>
    <initrd>${img.initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 bulwark.writer_kib_per_s=${opts.writerKiB ?? 256}</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
${disks.map((d) => `    <disk type='file' device='disk'><driver name='qemu' type='${d.format}'/><source file='${d.path}'/><target dev='${d.target}' bus='virtio'/></disk>`).join('\n')}
    <serial type='file'><source path='${opts.consoleLog}'/><target port='0'/></serial>
    <interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>`;
}

/** Waits until the guest agent of `domain` answers through libvirt (the guest has booted). */
export async function waitForAgent(domain: string, timeoutMs = 180_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      await virsh('qemu-agent-command', domain, '{"execute":"guest-ping"}', '--timeout', '2');
      return;
    } catch (err) {
      if (Date.now() > end) throw new Error(`the guest agent of ${domain} did not answer within ${timeoutMs / 1000} s: ${(err as Error).message}`, { cause: err });
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

/** The guest's freeze status, asked through libvirt. */
export async function frozenStatus(domain: string): Promise<string> {
  return (JSON.parse(await virsh('qemu-agent-command', domain, '{"execute":"guest-fsfreeze-status"}', '--timeout', '5')) as { return: string }).return;
}

/** Removes a domain of the tests whatever its state: stopped, checkpoints' metadata and definition gone. */
export async function removeDomain(domain: string): Promise<void> {
  await virsh('destroy', domain).catch(() => undefined);
  await virsh('undefine', domain, '--checkpoints-metadata').catch(() => undefined);
}
