// Turns bench/vm.sh's measurements into a markdown table (printed, and written to <report.md>).
//
//   node vm-report.mjs <vm-out-dir> <report.md>
//
// Reads <vm-out-dir>/results.tsv (tool, metric, status, value, rss_kib, cpu_s, text; one measurement
// per line) and <vm-out-dir>/meta.txt (KEY=VALUE lines).
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';

const [dir, reportPath] = process.argv.slice(2);
if (!dir || !reportPath) {
  process.stderr.write('usage: vm-report.mjs <vm-out-dir> <report.md>\n');
  process.exit(2);
}

const meta = {};
for (const line of readFileSync(join(dir, 'meta.txt'), 'utf8').split('\n')) {
  const i = line.indexOf('=');
  if (i > 0) meta[line.slice(0, i)] = line.slice(i + 1);
}
const TOOLS = ['bulwark', 'bulwark-libvirt', 'virtnbdbackup'];
// Bulwark's output has no copies of the guest's kernel and initrd (virtnbdbackup's has).
const isBulwark = (t) => t === 'bulwark' || t === 'bulwark-libvirt';
const ran = (meta.TOOLS ?? TOOLS.join(' ')).split(/\s+/).filter(Boolean);

const results = {};
for (const line of readFileSync(join(dir, 'results.tsv'), 'utf8').split('\n')) {
  if (!line.trim()) continue;
  const [tool, metric, status, value, rss, cpu, text] = line.split('\t');
  results[tool] ??= {};
  results[tool][metric] = {
    status,
    value: value === '' || value === undefined ? null : Number(value),
    rss_kib: rss === '' || rss === undefined ? null : Number(rss),
    cpu_s: cpu === '' || cpu === undefined ? null : Number(cpu),
    text: text ?? '',
  };
}
const get = (tool, metric) => results[tool]?.[metric];

const notes = [];
const noteIndex = new Map();
function failCell(tool, metric, r) {
  const tail = r.text || 'no output';
  const key = `${tool}/${tail}`;
  let n = noteIndex.get(key);
  if (n === undefined) {
    notes.push(`${tool} ${metric}: ${tail.replaceAll(' ⏎ ', '\n    ')}`);
    n = notes.length;
    noteIndex.set(key, n);
  }
  return { text: `${r.status} [${n}]` };
}

// A cell: {num} or {text}. pick(r) gives the number from an ok measurement.
function cell(tool, metric, pick) {
  if (!ran.includes(tool)) return { text: 'not run' };
  const r = get(tool, metric);
  if (!r) return { text: '–' };
  if (r.status !== 'ok') return failCell(tool, metric, r);
  const v = pick(r);
  return v === null || v === undefined || Number.isNaN(v) ? { text: '–' } : { num: v };
}
const wall = (r) => r.value;
const rssMiB = (r) => (r.rss_kib === null ? null : r.rss_kib / 1024);
const cpu = (r) => r.cpu_s;
const MiB = (r) => (r.value === null ? null : r.value / 1048576);
function growth(tool) {
  const a = cell(tool, 'size_full', MiB);
  const b = cell(tool, 'size_inc', MiB);
  if (a.num === undefined) return a;
  if (b.num === undefined) return b;
  return { num: b.num - a.num };
}
function verifyCell(tool) {
  if (!ran.includes(tool)) return { text: 'not run' };
  const r = get(tool, 'verify');
  if (!r) return { text: '–' };
  if (r.status === 'ok') return { text: 'ok' };
  if (r.status === 'skipped') return { text: 'skipped (restore failed)' };
  const c = failCell(tool, 'restore check', r);
  return { text: `**${c.text}**` };
}

const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));
const show = (c) => (c.num !== undefined ? fmt(c.num) : c.text);
const ratio = (b, v) => (b.num !== undefined && v.num !== undefined && b.num > 0 ? `${fmt(v.num / b.num)}×` : '');

const rows = [
  ['full backup: wall time (s)', (t) => cell(t, 'full', wall)],
  ['full backup: peak RSS (MiB)', (t) => cell(t, 'full', rssMiB)],
  ['full backup: CPU time (s, user+sys)', (t) => cell(t, 'full', cpu)],
  ['output size after full (MiB)', (t) => cell(t, 'size_full', MiB)],
  ['incremental backup: wall time (s)', (t) => cell(t, 'inc', wall)],
  ['incremental backup: peak RSS (MiB)', (t) => cell(t, 'inc', rssMiB)],
  ['incremental backup: CPU time (s, user+sys)', (t) => cell(t, 'inc', cpu)],
  ['incremental: data read from the disk (MiB; virtnbdbackup: its .inc.data file)', (t) => {
    const c = cell(t, 'inc_read', MiB);
    const r = get(t, 'inc_read');
    // A second backup that read the whole disk is not an incremental: say so in the cell.
    return c.num !== undefined && r.text !== 'incremental' ? { text: `${fmt(c.num)} (**${r.text} read**)` } : c;
  }],
  ['output growth by incremental (MiB)', growth],
  ['output size after incremental (MiB)', (t) => cell(t, 'size_inc', MiB)],
  ['… of which copies of the guest kernel + initrd (MiB)', (t) => (isBulwark(t) && ran.includes(t) ? { num: 0 } : cell(t, 'boot_files', MiB))],
  ['output size after incremental without those (MiB)', (t) => {
    const a = cell(t, 'size_inc', MiB);
    if (a.num === undefined || isBulwark(t)) return a;
    const b = cell(t, 'boot_files', MiB);
    return b.num === undefined ? b : { num: a.num - b.num };
  }],
  ['restore latest point: wall time (s)', (t) => cell(t, 'restore', wall)],
  ['restore latest point: peak RSS (MiB)', (t) => cell(t, 'restore', rssMiB)],
  ['restore latest point: CPU time (s, user+sys)', (t) => cell(t, 'restore', cpu)],
  ['restored disk checked (e2fsck -fn + file sha256)', verifyCell],
];

const L = [];
L.push(`# Bulwark (plain QEMU and libvirt) vs virtnbdbackup, live VM — ${meta.DATE ?? ''}`);
L.push('');
L.push(
  `Machine: ${meta.CPU} (${meta.NPROC} cores), ${meta.RAM_GIB} GiB RAM, ${meta.OS}, kernel ${meta.KERNEL}; QEMU ${meta.QEMU_VERSION} under TCG (no KVM). ` +
    `Versions: bulwark ${meta.BULWARK_VERSION || '?'} (${meta.BULWARK_COMMIT}), virtnbdbackup ${meta.VNB_VERSION || '?'} on libvirt ${meta.LIBVIRT_VERSION || '?'}, node ${meta.NODE_VERSION}.`,
);
L.push('');
L.push(
  `Guest: test/guest (busybox + qemu-ga, writer off), 1 vCPU, ${meta.MEM_MIB} MiB, TCG. Data disk: ${meta.DISK_MIB} MiB qcow2 ext4 (virtio-blk) holding ` +
    `${meta.FILES_MIB} MiB in ${meta.FILES} real files (mkfs.ext4 -d), mounted on /data; each tool gets its own copy of it. ` +
    `Between full and incremental the guest writes ${meta.WRITE_MIB} MiB of /dev/urandom to a new file and syncs (guest-exec). ` +
    `bulwark: Bulwark on plain QEMU (QMP + agent sockets); bulwark-libvirt: Bulwark on a libvirt domain through its libvirt driver (\`--connect qemu:///system\`, the same domain definition as virtnbdbackup's); both with default settings (encrypted, zstd). ` +
    `virtnbdbackup: libvirt domain, stream format, ${meta.VNB_ARGS ? `extra args \`${meta.VNB_ARGS}\`` : 'default settings (no compression, no encryption)'}. ` +
    `All three freeze the guest's file system through the agent. The guest is stopped before the restore. Restores: Bulwark \`restore vm latest\` (raw image), virtnbdrestore (qcow2). ` +
    `Times and peak RSS from \`/usr/bin/time\` around the tool's own command (QEMU's and libvirtd's work is not in them; RSS is the largest single process). ` +
    `MiB = 2^20 bytes; output size = \`du -sb\` of each Bulwark repository / virtnbdbackup's backup folder. Ratios = virtnbdbackup ÷ bulwark and virtnbdbackup ÷ bulwark-libvirt (above 1× = that Bulwark faster/smaller/leaner).`,
);
L.push('');
L.push(`CPU idle just before the run: ${meta.IDLE_START} %; load average at start ${meta.LOAD_START}, at end ${meta.LOAD_END ?? '?'}. Run took ${meta.TOTAL_SECONDS ?? '?'} s.`);
L.push('');
L.push('| measure | bulwark | bulwark-libvirt | virtnbdbackup | ratio (virtnbdbackup ÷ bulwark) | ratio (virtnbdbackup ÷ bulwark-libvirt) |');
L.push('| --- | ---: | ---: | ---: | ---: | ---: |');
for (const [label, f] of rows) {
  const b = f('bulwark');
  const bl = f('bulwark-libvirt');
  const v = f('virtnbdbackup');
  L.push(`| ${label} | ${show(b)} | ${show(bl)} | ${show(v)} | ${ratio(b, v)} | ${ratio(bl, v)} |`);
}
const boot = (t) => get(t, 'boot');
const wr = (t) => get(t, 'guest_write');
L.push('');
L.push(
  `Not timed: guest boot to agent ${TOOLS.map((t) => `${t} ${boot(t)?.value ?? '–'} s`).join(', ')}; ` +
    `guest writing ${meta.WRITE_MIB} MiB ${TOOLS.map((t) => `${t} ${wr(t)?.value ?? '–'} s`).join(', ')}; ` +
    `restored image still locked after the restore command returned (virtnbdrestore's qemu-nbd exiting) ${TOOLS.map((t) => `${t} ${get(t, 'restore_locked')?.value ?? '–'} s`).join(', ')}.`,
);
if (notes.length > 0) {
  L.push('');
  L.push('Failures:');
  L.push('');
  notes.forEach((n, i) => L.push(`${i + 1}. ${n}`));
}
const text = L.join('\n') + '\n';
writeFileSync(reportPath, text);
process.stdout.write(text);
