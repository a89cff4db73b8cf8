// What Bulwark reads from a libvirt domain's XML (and checkpoint and backup XML), and the XML it
// writes for libvirt: the pull-mode backup and checkpoint documents, and a restored domain's
// definition (new name, UUID and MAC addresses unless the identity is kept, disks pointed at the
// restored files).
import { randomBytes } from 'node:crypto';
import type * as FastXml from 'fast-xml-parser';
import { lazyRequire } from '../../util/lazy-require.js';
import { BulwarkError } from '../../util/errors.js';

type Node = Record<string, unknown>;

export interface DomainDisk {
  /** Target device name (vda, sdb): the disk's name in the restore point. */
  target: string;
  format: string;
  /** File or block device path. */
  source: string;
  type: 'file' | 'block';
}

export interface DomainInfo {
  name: string;
  uuid: string;
  machine?: string;
  memoryBytes?: number;
  cpus?: number;
  disks: DomainDisk[];
  nics: { mac?: string; model?: string }[];
  /** The domain has a virtio serial channel for the guest agent; `connected` when the agent is up. */
  agent?: { connected: boolean };
  /** uid:gid QEMU runs as (the DAC security label), when libvirt relabels. */
  qemuUser?: { uid: number; gid: number };
}

const fastXml = lazyRequire<typeof FastXml>('fast-xml-parser');
const parserOptions: FastXml.X2jOptions = { ignoreAttributes: false, attributeNamePrefix: '@', parseAttributeValue: false, parseTagValue: false, isArray: (name) => ['disk', 'interface', 'channel', 'seclabel'].includes(name) };

function parse(xml: string, root: string): Node {
  let doc: Node;
  try {
    doc = new (fastXml().XMLParser)(parserOptions).parse(xml) as Node;
  } catch (err) {
    throw new BulwarkError('protocol', `libvirt sent XML that does not parse: ${(err as Error).message}`);
  }
  const top = doc[root];
  if (typeof top !== 'object' || top === null) throw new BulwarkError('protocol', `libvirt's XML has no <${root}> element`);
  return top as Node;
}

const obj = (v: unknown): Node => (typeof v === 'object' && v !== null ? (v as Node) : {});
const text = (v: unknown): string | undefined => (typeof v === 'string' ? v : typeof v === 'object' && v !== null && typeof (v as Node)['#text'] === 'string' ? ((v as Node)['#text'] as string) : undefined);
const list = (v: unknown): Node[] => (Array.isArray(v) ? v.map(obj) : v === undefined ? [] : [obj(v)]);

const UNIT: Record<string, number> = { b: 1, bytes: 1, k: 1024, kib: 1024, kb: 1000, m: 1024 ** 2, mib: 1024 ** 2, mb: 1e6, g: 1024 ** 3, gib: 1024 ** 3, gb: 1e9 };

export function parseDomain(xml: string): DomainInfo {
  const d = parse(xml, 'domain');
  const disks: DomainDisk[] = [];
  const devices = obj(d['devices']);
  for (const disk of list(devices['disk'])) {
    if ((disk['@device'] ?? 'disk') !== 'disk' || 'readonly' in disk) continue;
    const type = disk['@type'];
    const src = obj(disk['source']);
    const source = type === 'file' ? src['@file'] : type === 'block' ? src['@dev'] : undefined;
    const target = obj(disk['target'])['@dev'];
    if ((type !== 'file' && type !== 'block') || typeof source !== 'string' || typeof target !== 'string') continue;
    disks.push({ target, format: String(obj(disk['driver'])['@type'] ?? 'raw'), source, type });
  }
  const mem = d['memory'];
  const memUnit = String(obj(mem)['@unit'] ?? 'KiB').toLowerCase();
  const memValue = Number(text(mem));
  const agentChannel = list(devices['channel']).map((c) => obj(c['target'])).find((t) => t['@name'] === 'org.qemu.guest_agent.0');
  const dac = list(d['seclabel']).find((s) => s['@model'] === 'dac');
  const label = /^\+?(\d+):\+?(\d+)$/.exec(text(dac?.['label']) ?? '');
  const machine = obj(obj(d['os'])['type'])['@machine'];
  return {
    name: text(d['name']) ?? '',
    uuid: text(d['uuid']) ?? '',
    ...(typeof machine === 'string' ? { machine } : {}),
    ...(Number.isFinite(memValue) && UNIT[memUnit] ? { memoryBytes: memValue * UNIT[memUnit]! } : {}),
    ...(Number.isFinite(Number(text(d['vcpu']))) ? { cpus: Number(text(d['vcpu'])) } : {}),
    disks,
    nics: list(devices['interface']).map((i) => {
      const mac = obj(i['mac'])['@address'];
      const model = obj(i['model'])['@type'];
      return { ...(typeof mac === 'string' ? { mac } : {}), ...(typeof model === 'string' ? { model } : {}) };
    }),
    ...(agentChannel ? { agent: { connected: agentChannel['@state'] === 'connected' } } : {}),
    ...(label ? { qemuUser: { uid: Number(label[1]), gid: Number(label[2]) } } : {}),
  };
}

/** The disks a checkpoint tracks with a bitmap. */
export function checkpointDisks(xml: string): string[] {
  const c = parse(xml, 'domaincheckpoint');
  return list(obj(c['disks'])['disk'])
    .filter((d) => (d['@checkpoint'] ?? 'bitmap') === 'bitmap')
    .map((d) => String(d['@name']));
}

/** Per disk of a running pull-mode backup: its NBD export name and, for an incremental, the exported bitmap. */
export function backupExports(xml: string): { socket?: string; disks: { name: string; exportName: string; bitmap?: string; incremental: boolean }[] } {
  const b = parse(xml, 'domainbackup');
  const socket = obj(b['server'])['@socket'];
  return {
    ...(typeof socket === 'string' ? { socket } : {}),
    disks: list(obj(b['disks'])['disk'])
      .filter((d) => d['@backup'] !== 'no')
      .map((d) => {
        const name = String(d['@name']);
        const bitmap = d['@exportbitmap'];
        return { name, exportName: String(d['@exportname'] ?? name), ...(typeof bitmap === 'string' ? { bitmap } : {}), incremental: d['@backupmode'] === 'incremental' };
      }),
  };
}

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

/**
 * A pull-mode backup: every disk exported on `socket`, its copy-before-write data in the scratch file
 * Bulwark made (REUSE_EXTERNAL); incremental from `incremental` for the disks listed in `since`.
 */
export function backupXml(socket: string, disks: { target: string; scratch: string; incremental: boolean }[], incremental: string | undefined): string {
  const lines = ["<domainbackup mode='pull'>"];
  if (incremental) lines.push(`  <incremental>${esc(incremental)}</incremental>`);
  lines.push(`  <server transport='unix' socket='${esc(socket)}'/>`, '  <disks>');
  for (const d of disks) {
    lines.push(`    <disk name='${esc(d.target)}' backup='yes' type='file'${incremental ? ` backupmode='${d.incremental ? 'incremental' : 'full'}'` : ''}>`);
    lines.push(`      <driver type='qcow2'/>`, `      <scratch file='${esc(d.scratch)}'/>`, '    </disk>');
  }
  lines.push('  </disks>', '</domainbackup>');
  return lines.join('\n');
}

export function checkpointXml(name: string, disks: { target: string; bitmap: boolean }[]): string {
  return [
    '<domaincheckpoint>',
    `  <name>${esc(name)}</name>`,
    '  <disks>',
    ...disks.map((d) => `    <disk name='${esc(d.target)}' checkpoint='${d.bitmap ? 'bitmap' : 'no'}'/>`),
    '  </disks>',
    '</domaincheckpoint>',
  ].join('\n');
}

const ordered = { ignoreAttributes: false, attributeNamePrefix: '@', preserveOrder: true, parseAttributeValue: false, parseTagValue: false, trimValues: false } as const;

function randomMac(): string {
  // 52:54:00 is QEMU's prefix, which libvirt also hands out.
  return ['52', '54', '00', ...[...randomBytes(3)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/**
 * The domain XML of a restore point, made ready to define next to the original: a new name, no UUID
 * (libvirt makes one) and new MAC addresses unless `keepIdentity`; each disk's source pointed at its
 * restored file (and its format at the restored format); the live-only parts (ids, aliases, the
 * security label, the checkpoint of a backup job) left out.
 */
export interface RestoredDomainDisk {
  path: string;
  format: string;
  /**
   * Instant restore: the image's backing is this NBD export (raw), and a read or write the disk cannot
   * do pauses the domain instead of failing in the guest.
   */
  backing?: { socket: string; exportName: string };
}

export function restoredDomainXml(xml: string, opts: { name: string; keepIdentity: boolean; disks: Map<string, RestoredDomainDisk>; logDir?: string }): string {
  const tree = new (fastXml().XMLParser)(ordered).parse(xml) as Node[];
  const domain = tree.find((n) => 'domain' in n);
  if (!domain) throw new BulwarkError('repository-corrupt', 'the domain XML kept with this restore point has no <domain> element');
  const attrs = obj(domain[':@']);
  delete attrs['@id'];
  const children = domain['domain'] as Node[];
  const kept: Node[] = [];
  // File-backed serial ports and consoles of the original: the restored domain logs beside its disks
  // (a file the running original holds cannot be opened twice). The same old path gets the same new one.
  const logs = new Map<string, string>();
  const newLog = (old: string): string => {
    if (!logs.has(old)) logs.set(old, `${opts.logDir}/${opts.name.replace(/[^A-Za-z0-9_.-]/g, '_')}-console${logs.size || ''}.log`);
    return logs.get(old)!;
  };
  for (const c of children) {
    if ('uuid' in c && !opts.keepIdentity) continue;
    if ('seclabel' in c) continue;
    if ('name' in c) {
      kept.push({ name: [{ '#text': opts.name }] });
      continue;
    }
    if ('devices' in c) {
      for (const dev of c['devices'] as Node[]) {
        if ('disk' in dev) {
          const parts = dev['disk'] as Node[];
          const target = obj(parts.find((p) => 'target' in p)?.[':@'])['@dev'];
          const restored = typeof target === 'string' ? opts.disks.get(target) : undefined;
          if (!restored) continue;
          obj(dev[':@'])['@type'] = 'file';
          for (const p of parts) {
            if ('source' in p) p[':@'] = { '@file': restored.path };
            if ('driver' in p) p[':@'] = { ...obj(p[':@']), '@type': restored.format, ...(restored.backing ? { '@error_policy': 'stop', '@rerror_policy': 'stop' } : {}) };
            if ('backingStore' in p) p['backingStore'] = [];
          }
          if (restored.backing) {
            const at = parts.findIndex((p) => 'backingStore' in p);
            const store: Node = {
              backingStore: [
                { format: [], ':@': { '@type': 'raw' } },
                { source: [{ host: [], ':@': { '@transport': 'unix', '@socket': restored.backing.socket } }], ':@': { '@protocol': 'nbd', '@name': restored.backing.exportName } },
              ],
              ':@': { '@type': 'network' },
            };
            if (at >= 0) parts[at] = store;
            else parts.splice(parts.findIndex((p) => 'source' in p) + 1, 0, store);
          }
        }
        if ('channel' in dev && !opts.keepIdentity) {
          // The agent's socket path of the original: libvirt picks a new one for the restored domain.
          const parts = dev['channel'] as Node[];
          const isAgent = parts.some((p) => 'target' in p && obj(p[':@'])['@name'] === 'org.qemu.guest_agent.0');
          if (isAgent) for (const p of parts) if ('source' in p) delete obj(p[':@'])['@path'];
        }
        for (const kind of ['serial', 'console']) {
          if (!(kind in dev) || opts.keepIdentity || !opts.logDir || obj(dev[':@'])['@type'] !== 'file') continue;
          for (const p of dev[kind] as Node[]) {
            const old = obj(p[':@'])['@path'];
            if ('source' in p && typeof old === 'string') p[':@'] = { ...obj(p[':@']), '@path': newLog(old) };
          }
        }
        if ('interface' in dev && !opts.keepIdentity) {
          for (const p of dev['interface'] as Node[]) if ('mac' in p) p[':@'] = { '@address': randomMac() };
        }
        for (const p of Object.values(dev).filter(Array.isArray) as Node[][]) {
          for (let i = p.length - 1; i >= 0; i--) if ('alias' in p[i]!) p.splice(i, 1);
        }
      }
    }
    kept.push(c);
  }
  domain['domain'] = kept;
  return new (fastXml().XMLBuilder)({ ...ordered, format: false, suppressEmptyNode: true }).build(tree) as string;
}

