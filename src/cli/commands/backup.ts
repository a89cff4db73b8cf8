// backup files | backup disk
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { backupDiskImage, backupFiles, type BackupJobResult } from '../../jobs/backup.js';
import { backupVms, type ConsistencyPolicy } from '../../jobs/backup-vm.js';
import { driverFor } from '../../hypervisors/drivers.js';
import { endpointsFrom, isFolder, isLibvirt, labelOf, type VmEndpoint } from '../../hypervisors/registry.js';
import { BulwarkError } from '../../util/errors.js';
import { exitCodeFor } from '../exit-codes.js';
import { Context } from '../context.js';
import { bytes, duration, parseSize, rate, shortId } from '../format.js';
import { progressView, wantsTotals } from '../progress.js';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

function summaryText(r: BackupJobResult & { reused?: boolean }): string {
  const s = r.snapshot.summary;
  const lines: string[] = [];
  if (s.filesNew !== undefined) {
    lines.push(`Files: ${s.filesNew} new, ${s.filesChanged} changed, ${s.filesUnmodified} unmodified; ${s.dirs} folders`);
  }
  if (r.reused) lines.push('Disk image unchanged since the parent snapshot: its index was reused without reading.');
  lines.push(`Read ${bytes(s.bytesRead)} in ${duration(s.durationMs)} (${rate(s.bytesRead, s.durationMs)}); added ${bytes(s.bytesNew)} of new data (${s.blobsNew} blobs)`);
  for (const e of r.errors) lines.push(`error: ${e.path}: ${e.message}`);
  for (const c of r.changed) lines.push(`warning: ${c}: changed while being read (stored as last read)`);
  for (const w of r.warnings ?? []) lines.push(`warning: ${w}`);
  lines.push(`snapshot ${shortId(r.snapshot.id)} saved${r.parent ? ` (parent ${shortId(r.parent)})` : ''}`);
  if (r.errors.length > 0) lines.push(`${r.errors.length} item(s) could not be read and are not in the snapshot.`);
  return lines.join('\n');
}

export function register(program: Command): void {
  const backup = program.command('backup').description('create a restore point (files, disk images, VMs)');

  backup
    .command('files')
    .description('versioned file backup')
    .argument('<path...>', 'files and folders to back up')
    .option('-e, --exclude <glob>', 'exclude matching entries (repeatable)', collect, [])
    .option('--exclude-file <file>', 'read exclude patterns from a file, one per line', collect, [])
    .option('-x, --one-file-system', 'do not cross file system boundaries')
    .option('--tag <tag>', 'tag the snapshot (repeatable)', collect, [])
    .option('--host <name>', 'host name to record (default: this host)')
    .option('--force', 'read every file, ignoring the parent snapshot')
    .option('--verify-reused', 'read every file and check each blob it shares with earlier snapshots; damaged ones are stored again')
    .addHelpText('after', '\nExample:\n  bulwark -r /backup/repo backup files /etc /srv --exclude "*.tmp" --tag nightly')
    .action(async (paths: string[], o: { exclude: string[]; excludeFile: string[]; oneFileSystem?: boolean; tag: string[]; host?: string; force?: boolean; verifyReused?: boolean }, cmd: Command) => {
      const ctx = Context.from(cmd);
      const excludes = [...o.exclude];
      for (const f of o.excludeFile) {
        const text = await readFile(f, 'utf8').catch((err: Error) => {
          throw new BulwarkError('usage', `cannot read exclude file '${f}': ${err.message}`);
        });
        excludes.push(...text.split('\n'));
      }
      await ctx.withRepo(async (repo) => {
        const view = progressView(ctx.opts, 'backup');
        try {
          const r = await backupFiles(repo, {
            paths,
            excludes,
            oneFileSystem: o.oneFileSystem ?? false,
            tags: o.tag,
            noParent: o.force ?? false,
            verifyReused: o.verifyReused ?? false,
            estimate: wantsTotals(ctx.opts),
            ...(o.host ? { host: o.host } : {}),
            onProgress: (p) => view.update(p),
          });
          view.stop();
          if (r.errors.length > 0 || r.changed.length > 0) ctx.markPartial();
          ctx.print({ snapshot: r.snapshot.id, parent: r.parent, summary: r.snapshot.summary, errors: r.errors, changed: r.changed, warnings: r.warnings ?? [] }, () => summaryText(r));
        } finally {
          view.stop();
        }
      });
    });

  backup
    .command('disk')
    .description("back up disk images or block devices, sparse-aware; the disk's name is the file's base name")
    .argument('<image-or-device...>', 'raw image files or block devices')
    .option('--tag <tag>', 'tag the snapshot (repeatable)', collect, [])
    .option('--host <name>', 'host name to record (default: this host)')
    .option('--name <name>', 'disk name in the snapshot (one image only)')
    .option('--force', 'read the whole image even if it is unchanged since the parent')
    .option('--verify-reused', 'read the whole image and check each block it shares with earlier snapshots; damaged ones are stored again')
    .addHelpText('after', '\nExample:\n  bulwark -r /backup/repo backup disk /var/lib/libvirt/images/web01.img')
    .action(async (images: string[], o: { tag: string[]; host?: string; name?: string; force?: boolean; verifyReused?: boolean }, cmd: Command) => {
      const ctx = Context.from(cmd);
      if (o.name && images.length > 1) throw new BulwarkError('usage', '--name can only be used with one image');
      await ctx.withRepo(async (repo) => {
        repo.verifyReused = o.verifyReused ?? false;
        const results = [];
        for (const path of images) {
          const view = progressView(ctx.opts, `backup ${path}`);
          try {
            const r = await backupDiskImage(repo, { path, tags: o.tag, noParent: (o.force ?? false) || (o.verifyReused ?? false), ...(o.host ? { host: o.host } : {}), ...(o.name ? { name: o.name } : {}), onProgress: (p) => view.update(p) });
            view.stop();
            results.push(r);
            if (!ctx.opts.json) ctx.print(r, summaryText);
          } finally {
            view.stop();
          }
        }
        if (ctx.opts.json) ctx.print({ snapshots: results.map((r) => ({ snapshot: r.snapshot.id, parent: r.parent, source: r.snapshot.source, reused: r.reused, summary: r.snapshot.summary })) }, () => '');
      });
    });

  backup
    .command('vm')
    .description('live, consistent backup of running QEMU VMs and libvirt domains; --group takes one point in time for all named VMs')
    .argument('<name...>', 'VMs by name (from --connect …,name= or the VM list)')
    .option('--connect <uri>', 'qmp:/path/qmp.sock[,qga=/path/qga.sock|off][,name=N][,hooks=PATH], qemu:///system[,hooks=PATH] (libvirt), dir:/path/machine-folder (VirtualBox, VMware, Hyper-V; offline) or file:/path/vms.json (repeatable; the agent is found through QEMU without qga=)', collect, [])
    .option('--group', 'freeze all named VMs, snapshot all, thaw all: one point in time')
    .option('--consistency <policy>', 'application | auto | crash', 'auto')
    .option('--mode <mode>', 'snapshot (live) | suspend (pause vCPUs around the snapshot point) | stop (clean shutdown, point, start again)', 'snapshot')
    .option('--stop-timeout <seconds>', 'with --mode stop: how long a guest may take to shut down', '300')
    .option('--full', 'read whole disks even where a dirty bitmap allows an incremental')
    .option('--scratch-dir <dir>', 'where fleecing images go during the backup', '/var/tmp')
    .option('--scratch-min <size>', 'free scratch space required to start (default: max(10G, 15% of the disks)); running out later fails the backup, not the guest')
    .option('--limit-read <size>', 'read at most this much per second from the VMs\' disks, e.g. 50M (leaves the guests\' storage room to work)')
    .option('--tag <tag>', 'tag the snapshots (repeatable)', collect, [])
    .option('--host <name>', 'host name to record (default: this host)')
    .addHelpText('after', '\nExample:\n  bulwark backup vm web01 db01 --group --connect file:/etc/bulwark/vms.json')
    .action(async (names: string[], o: { connect: string[]; group?: boolean; consistency: string; mode: string; stopTimeout: string; full?: boolean; scratchDir: string; scratchMin?: string; limitRead?: string; tag: string[]; host?: string }, cmd: Command) => {
      const ctx = Context.from(cmd);
      if (!['application', 'auto', 'crash'].includes(o.consistency)) throw new BulwarkError('usage', `unknown --consistency '${o.consistency}'`, { hint: 'application, auto or crash' });
      if (!['snapshot', 'suspend', 'stop'].includes(o.mode)) throw new BulwarkError('usage', `unknown --mode '${o.mode}'`, { hint: 'snapshot, suspend or stop' });
      const stopTimeout = Number(o.stopTimeout);
      if (!(stopTimeout > 0)) throw new BulwarkError('usage', `--stop-timeout '${o.stopTimeout}' is not a number of seconds`);
      const scratchMin = o.scratchMin === undefined ? undefined : parseSize(o.scratchMin);
      if (o.scratchMin !== undefined && scratchMin === undefined) throw new BulwarkError('usage', `--scratch-min '${o.scratchMin}' is not a size`, { hint: 'e.g. 0, 512M, 20G' });
      const limitRead = o.limitRead === undefined ? undefined : parseSize(o.limitRead);
      if (o.limitRead !== undefined && !limitRead) throw new BulwarkError('usage', `--limit-read '${o.limitRead}' is not a positive size per second`, { hint: 'e.g. 50M' });
      const endpoints = await selectEndpoints(await endpointsFrom(o.connect), names);
      await ctx.withRepo(async (repo) => {
        const view = progressView(ctx.opts, 'backup');
        let results;
        try {
          results = await backupVms(repo, driverFor, {
            endpoints,
            group: o.group ?? false,
            policy: o.consistency as ConsistencyPolicy,
            mode: o.mode as 'snapshot' | 'suspend' | 'stop',
            stopTimeoutMs: stopTimeout * 1000,
            full: o.full ?? false,
            scratchDir: o.scratchDir,
            ...(scratchMin !== undefined ? { scratchMin } : {}),
            ...(limitRead ? { limitRead } : {}),
            tags: o.tag,
            ...(o.host ? { host: o.host } : {}),
            onProgress: (p) => view.update(p),
            onEvent: (e) => {
              // What guardians did on their own is news as it happens; the result's warnings repeat it.
              if (e.phase === 'guardian' && !ctx.opts.json && !ctx.opts.quiet) process.stderr.write(`VM ${e.vm}: ${e.message}\n`);
            },
          });
        } finally {
          view.stop();
        }
        const out = results.map((r) => ({ vm: r.vm, snapshot: r.snapshot?.id, error: r.error, code: r.code, hint: r.hint, consistency: r.consistency, freezeMs: r.freezeMs, frozen: r.frozen, snapshotAt: r.snapshotAt, warnings: r.warnings, disks: r.disks }));
        ctx.print({ results: out }, () =>
          results
            .map((r) =>
              r.error
                ? [`VM ${r.vm}: FAILED: ${r.error}`, ...(r.hint ? [`  hint: ${r.hint}`] : []), ...r.warnings.map((w) => `  warning: ${w}`)].join('\n')
                : [
                    `VM ${r.vm}: snapshot ${shortId(r.snapshot!.id)}, ${r.consistency}-consistent, ${o.mode === 'stop' ? `down ${duration(r.freezeMs ?? 0)}` : `I/O held ${r.freezeMs} ms`}`,
                    ...r.disks.map((d) => `  ${d.name}: ${d.read} read of ${bytes(d.bytesRead)}, ${bytes(d.bytesNew)} new${d.reason ? ` (${d.reason})` : ''}`),
                    ...r.warnings.map((w) => `  warning: ${w}`),
                  ].join('\n'),
            )
            .join('\n'),
        );
        // All failed: the exit code of their error when they share one (2 for a usage error), else 1.
        const failed = results.filter((r) => r.error);
        const codes = new Set(failed.map((r) => r.code ?? 'failed'));
        if (failed.length === results.length && failed.length > 0) process.exitCode = codes.size === 1 ? exitCodeFor([...codes][0]!) : 1;
        else if (failed.length > 0) ctx.markPartial();
      });
    });
}

/**
 * Endpoints for the VM names asked for: endpoints without a name are asked for theirs; a libvirt
 * connection given without a domain offers all of its domains (by name, or by UUID).
 */
export async function selectEndpoints(all: VmEndpoint[], names: string[]): Promise<VmEndpoint[]> {
  const named: VmEndpoint[] = [];
  // Endpoints that stand for several VMs: a libvirt connection without a domain, a folder of machine folders.
  const connections = all.filter((e) => (isLibvirt(e) && !e.libvirt.domain) || isFolder(e));
  for (const e of all) {
    if (connections.includes(e)) {
      named.push(...(await driverFor(e).list(e)));
      continue;
    }
    const n = e.name ?? (await driverFor(e).nameOf(e));
    named.push(n ? { ...e, name: n } : e);
  }
  return names.map((n) => {
    const e = named.find((x) => x.name === n);
    if (e) return e;
    const byUuid = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i.test(n) ? connections.find(isLibvirt) : undefined;
    if (byUuid && isLibvirt(byUuid)) return { ...byUuid, libvirt: { ...byUuid.libvirt, domain: n } };
    throw new BulwarkError('usage', `no VM named '${n}' among the connected VMs (${named.map(labelOf).join(', ') || 'none'})`, { hint: "add --connect qmp:…,name=NAME or --connect qemu:///system, or see 'bulwark vm list'" });
  });
}
