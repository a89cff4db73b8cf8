// restore <snapshot>[:<path>] | restore vm <snapshot>
import type { Command } from 'commander';
import { instantRestore, resumeInstantRestore, type InstantEvent } from '../../jobs/instant-restore.js';
import { driverFor } from '../../hypervisors/drivers.js';
import { endpointsFrom } from '../../hypervisors/registry.js';
import { restoreDisks, restoreFiles, restoreFilesToGuest } from '../../jobs/restore.js';
import { selectEndpoints } from './backup.js';
import { RESTORE_FORMATS, type RestoreFormat } from '../../restore/disk.js';
import { BulwarkError } from '../../util/errors.js';
import { Context } from '../context.js';
import { bytes, parseSize, shortId } from '../format.js';
import { progressView } from '../progress.js';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

/** Until Ctrl-C / SIGTERM, or until the VM is gone. */
function untilStoppedOrGone(running: () => Promise<boolean>): Promise<void> {
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      void running().then((yes) => {
        if (!yes) done();
      });
    }, 1000);
    const done = (): void => {
      clearInterval(timer);
      resolve();
    };
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
  });
}

/** Where the restored VM is, in words. */
function placeOf(r: { pid?: number; qmp?: string; domain?: { name: string; uri: string } }): string {
  return r.domain ? `libvirt domain ${r.domain.name} on ${r.domain.uri}, persistent now` : `QEMU pid ${r.pid}, monitor ${r.qmp}`;
}

function filterOpts(o: { host?: string; tag?: string[]; source?: string }): { hostname?: string; tags?: string[]; source?: string } {
  return { ...(o.host ? { hostname: o.host } : {}), ...(o.tag && o.tag.length ? { tags: o.tag } : {}), ...(o.source ? { source: o.source } : {}) };
}

export function register(program: Command): void {
  const restore = program
    .command('restore')
    .description('restore files from a snapshot (also single files); "restore vm" restores whole disks')
    .argument('<snapshot[:path]>', "snapshot id, unique prefix, or 'latest', optionally with a path inside it")
    // Not requiredOption: commander would then demand it of 'restore vm' too (it checks parents).
    .option('-t, --target <dir>', 'folder to restore into (created if missing; required)')
    .option('-i, --include <glob>', 'restore only matching entries (repeatable)', collect, [])
    .option('--verify', 're-read restored files and check them against the snapshot')
    .option('--host <name>', "narrow 'latest' to this host")
    .option('--tag <tag>', "narrow 'latest' to snapshots with this tag", collect, [])
    .option('--source <source>', "narrow 'latest' to a source, e.g. files or disk:web01")
    .option('--to-guest <vm:path>', 'write what is restored into the running VM at <path>, through its guest agent (no network into the guest needed)')
    .option('--connect <uri>', 'with --to-guest: how to reach the VM (qmp:/path/qmp.sock[,qga=…], or a VM list file:…)')
    .option('--overwrite', 'with --to-guest: replace files already in the guest')
    .addHelpText('after', '\nExamples:\n  bulwark restore latest --target /tmp/restore\n  bulwark restore 1a2b3c4d:/etc/nginx/nginx.conf --target /tmp/restore\n  bulwark restore latest:/vda/p1/etc/nginx/nginx.conf --to-guest web01:/etc/nginx/ --connect qmp:/run/qemu/web01.qmp')
    .action(async (ref: string, o: { target?: string; include: string[]; verify?: boolean; host?: string; tag: string[]; source?: string; toGuest?: string; connect?: string; overwrite?: boolean }, cmd: Command) => {
      const ctx = Context.from(cmd);
      const colon = ref.indexOf(':');
      const snap = colon >= 0 ? ref.slice(0, colon) : ref;
      const path = colon >= 0 ? ref.slice(colon + 1) : undefined;
      if (o.toGuest !== undefined) {
        const m = /^([^:]+):(\/.*)$/.exec(o.toGuest);
        if (!m) throw new BulwarkError('usage', `--to-guest '${o.toGuest}' is not VM:/absolute/path`, { hint: 'e.g. --to-guest web01:/root/restored/' });
        const [endpoint] = await selectEndpoints(await endpointsFrom(o.connect ? [o.connect] : []), [m[1]!]);
        await ctx.withRepo(async (repo) => {
          const r = await restoreFilesToGuest(repo, { ref: snap, ...(path ? { path } : {}), filter: filterOpts(o), includes: o.include, driver: driverFor(endpoint!), endpoint: endpoint!, guestPath: m[2]!, overwrite: o.overwrite ?? false });
          if (r.errors.length > 0) ctx.markPartial();
          ctx.print(r, (x) => [`wrote ${x.files} files and ${x.dirs} folders (${bytes(x.bytes)}) into VM ${m[1]} at ${m[2]}`, ...x.errors.map((e) => `error: ${e.path}: ${e.message}`)].join('\n'));
        });
        return;
      }
      const target = o.target;
      if (!target) throw new BulwarkError('usage', "required option '-t, --target <dir>' not specified", { hint: 'bulwark restore <snapshot> --target <dir> (or --to-guest VM:PATH)' });
      await ctx.withRepo(async (repo) => {
        const view = progressView(ctx.opts, 'restore');
        try {
          const r = await restoreFiles(repo, { ref: snap, target, includes: o.include, verify: o.verify ?? false, filter: filterOpts(o), ...(path ? { path } : {}), onProgress: (p) => view.update(p) });
          view.stop();
          const mismatches = r.verified?.mismatches ?? [];
          if (r.errors.length > 0) ctx.markPartial();
          if (mismatches.length > 0) throw new BulwarkError('failed', `verification failed for ${mismatches.length} file(s): ${mismatches.slice(0, 10).join(', ')}`);
          ctx.print(r, () =>
            [
              `restored ${r.files} files and ${r.dirs} folders (${bytes(r.bytes)}) from snapshot ${shortId(r.snapshot)} to ${target}`,
              ...(r.verified ? [`verified ${r.verified.files} files: all match`] : []),
              ...r.errors.map((e) => `error: ${e.path}: ${e.message}`),
            ].join('\n'),
          );
        } finally {
          view.stop();
        }
      });
    });

  // --target, --host, --tag and --source belong to 'restore' itself: commander gives options of a parent
  // command to it wherever they stand, so 'restore vm' reads them from there.
  restore
    .command('vm')
    .description('restore whole disks of a VM or disk snapshot as <dir>/<disk>.<format>; a VirtualBox, VMware or Hyper-V machine folder comes back as that folder (takes --target, --host, --tag, --source)')
    .argument('[snapshot]', "snapshot id, unique prefix, or 'latest' (not needed with --resume)")
    .option('--format <format>', 'raw or qcow2 (written by Bulwark itself), or (converted by qemu-img) vmdk, vhdx, vdi, vhd', 'raw')
    .option('--disk <name>', 'only this disk (repeatable)', collect, [])
    .option('--define', "VM snapshots: a libvirt domain is defined again on the restored disks (not started); a QEMU VM gets <dir>/<vm>.qemu.sh, a QEMU command line with the recorded machine")
    .option('--print-xml', 'libvirt domains: write the restored domain\'s XML to <dir>/<name>.xml and show it, without defining it')
    .option('--name <name>', 'libvirt domains (--define, --print-xml, --instant): the restored domain\'s name (default <name>-restored)')
    .option('--keep-identity', 'libvirt domains: keep the original name, UUID and MAC addresses (to replace a lost VM, not to run beside it)')
    .option('--connect <uri>', 'libvirt domains: define (or with --instant, start) on this connection instead of the recorded one (qemu:///system, qemu:///session)')
    .option('--instant', 'boot the VM at once on its disks served from the repository, copy them into --target while it runs (<dir>/<disk>.qcow2), and return when they are local; the VM runs on (a libvirt restore point comes back as a libvirt domain, defined once its disks are local)')
    .option('--accel <accel>', 'with --instant: QEMU accelerator (kvm, tcg, or kvm:tcg for KVM where it works)', 'kvm:tcg')
    .option('--copy-limit <size>', 'with --instant: copy the disks at most this fast per second, e.g. 50M (leaves the repository\'s disk and network room)')
    .option('--resume', 'with --instant: an instant restore whose command ended mid-copy (killed, host rebooted while the VM ran): serve its disks again and finish the copy into --target')
    .addHelpText('after', '\nExamples:\n  bulwark restore vm latest --source disk:web01 --target /var/lib/libvirt/images/restore\n  bulwark restore vm latest --source vm:web01 --target /var/lib/libvirt/images/web01-r --format qcow2 --define')
    .action(async (ref: string | undefined, _o: unknown, cmd: Command) => {
      const ctx = Context.from(cmd);
      const o = cmd.optsWithGlobals<{ instant?: boolean; accel: string; copyLimit?: string; resume?: boolean; target?: string; format: string; disk: string[]; define?: boolean; printXml?: boolean; name?: string; keepIdentity?: boolean; connect?: string; host?: string; tag: string[]; source?: string }>();
      if (o.connect !== undefined && !/^qemu(\+unix)?:\/\/\/(system|session)/.test(o.connect)) throw new BulwarkError('usage', `--connect '${o.connect}' is not a libvirt URI`, { hint: 'qemu:///system or qemu:///session' });
      if (!o.target) throw new BulwarkError('usage', "required option '-t, --target <dir>' not specified", { hint: 'bulwark restore vm <snapshot> --target <dir>' });
      if (!(RESTORE_FORMATS as readonly string[]).includes(o.format)) throw new BulwarkError('usage', `unknown format '${o.format}'`, { hint: `use --format ${RESTORE_FORMATS.join(', ')}` });
      const target = o.target;
      if ((o.copyLimit !== undefined || o.resume) && !o.instant) throw new BulwarkError('usage', '--copy-limit and --resume go with --instant');
      if (o.instant) {
        if (o.define || o.printXml || o.keepIdentity || o.disk.length || cmd.getOptionValueSource('format') !== 'default') throw new BulwarkError('usage', '--instant restores every disk as qcow2 and boots the VM beside the original: --define, --print-xml, --keep-identity, --disk and --format do not apply');
        const copySpeed = o.copyLimit === undefined ? undefined : parseSize(o.copyLimit);
        if (o.copyLimit !== undefined && !copySpeed) throw new BulwarkError('usage', `--copy-limit '${o.copyLimit}' is not a positive size per second`, { hint: 'e.g. 50M' });
        if (ref === undefined && !o.resume) throw new BulwarkError('usage', "missing argument 'snapshot'", { hint: 'bulwark restore vm <snapshot> --instant --target <dir>' });
        const common = {
          target,
          ...(copySpeed ? { copySpeed } : {}),
          onEvent: (e: InstantEvent) => {
            if (e.phase === 'copying') return;
            if (ctx.opts.json) process.stdout.write(JSON.stringify({ type: 'event', ...e }) + '\n');
            else ctx.info(e.message);
          },
          keepServing: untilStoppedOrGone,
        };
        await ctx.withRepo(async (repo) => {
          const r = o.resume
            ? await resumeInstantRestore(repo, { ...common, ...(ref !== undefined ? { ref } : {}) })
            : await instantRestore(repo, { ...common, ref: ref!, filter: filterOpts(o), accel: o.accel, ...(o.name ? { name: o.name } : {}), ...(o.connect ? { connect: o.connect } : {}) });
          const at = placeOf(r);
          ctx.print(r, (v) => `VM ${v.vm} (${at}) ${v.resumed ? 'was attached again' : `booted in ${(v.bootedMs / 1000).toFixed(1)} s`} and runs on its local disks (${v.disks.map((d) => d.path).join(', ')}), copied in ${(v.copiedMs / 1000).toFixed(1)} s`);
        });
        return;
      }
      if (ref === undefined) throw new BulwarkError('usage', "missing argument 'snapshot'", { hint: 'bulwark restore vm <snapshot> --target <dir>' });
      await ctx.withRepo(async (repo) => {
        const view = progressView(ctx.opts, 'restore');
        try {
          const r = await restoreDisks(repo, {
            ref,
            target,
            // Left out when not given: a machine folder then comes back as a folder in its own formats.
            ...(cmd.getOptionValueSource('format') === 'default' ? {} : { format: o.format as RestoreFormat }),
            disks: o.disk,
            filter: filterOpts(o),
            define: o.define ?? false,
            printXml: o.printXml ?? false,
            ...(o.name ? { name: o.name } : {}),
            ...(o.keepIdentity ? { keepIdentity: true } : {}),
            ...(o.connect ? { connect: o.connect } : {}),
            onProgress: (p) => view.update(p),
          });
          view.stop();
          const dom = r.domain;
          ctx.print({ snapshot: r.snapshot.id, disks: r.disks, ...(r.folder ? { folder: r.folder } : {}), ...(r.definition ? { definition: r.definition } : {}), ...(dom ? { domain: { uri: dom.uri, name: dom.name, uuid: dom.uuid, defined: dom.defined, xmlFile: dom.xmlFile, ...(o.printXml ? { xml: dom.xml } : {}) } } : {}) }, () =>
            [
              ...r.disks.map((d) => `restored disk ${d.path} (${bytes(d.size)}, ${bytes(d.bytesWritten)} written, the rest left sparse)`),
              ...(r.folder ? [`restored the ${r.folder.hypervisor} machine folder: open ${r.folder.config} in the hypervisor`] : []),
              ...(r.definition ? [`VM definition ${r.definition}: review it, then run it to boot the restored VM`] : []),
              ...(dom?.defined ? [`defined libvirt domain ${dom.name} (${dom.uuid}) on ${dom.uri}, not started; its XML is in ${dom.xmlFile}`] : []),
              ...(dom && !dom.defined ? [dom.xml, `(also written to ${dom.xmlFile}; define it with --define)`] : []),
            ].join('\n'),
          );
        } finally {
          view.stop();
        }
      });
    });
}
