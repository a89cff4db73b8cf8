// verify-boot: boot a restore point, isolated, and run checks inside it.
import type { Command } from 'commander';
import { verifyBoot, type GuestCheck } from '../../jobs/verify-boot.js';
import { BulwarkError } from '../../util/errors.js';
import { Context } from '../context.js';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

export function register(program: Command): void {
  program
    .command('verify-boot')
    .description('prove a VM restore point boots: served from the repository to an isolated QEMU (no network, throwaway writes), the guest agent must answer, then the checks run inside it')
    .argument('<snapshot>', "snapshot id, unique prefix, or 'latest'")
    .option('--check <command>', 'a shell command that must exit 0 in the guest (repeatable)', collect, [])
    .option('--file <path>', 'a file that must exist in the guest (repeatable)', collect, [])
    .option('--port <port>', 'a TCP port something must listen on inside the guest (repeatable)', collect, [])
    .option('--boot-timeout <seconds>', 'how long the guest agent may take to answer', '300')
    .option('--accel <accel>', 'QEMU accelerator: kvm, tcg, or kvm:tcg (KVM where it works)', 'kvm:tcg')
    .option('--kernel <path>', 'boot this kernel instead of the recorded one (VMs booted with -kernel)')
    .option('--host <hostname>', "with 'latest': snapshots of this host")
    .option('--source <source>', "with 'latest': snapshots of this source (vm:NAME)")
    .addHelpText('after', "\nExamples:\n  bulwark verify-boot latest --source vm:web01 --check 'systemctl is-system-running' --port 443\n  bulwark verify-boot 1a2b3c4d --file /var/lib/postgresql/15/main/PG_VERSION --json")
    .action(async (ref: string, o: { check: string[]; file: string[]; port: string[]; bootTimeout: string; accel: string; kernel?: string; host?: string; source?: string }, cmd: Command) => {
      const ctx = Context.from(cmd);
      const checks: GuestCheck[] = [...o.check.map((command) => ({ kind: 'command' as const, command })), ...o.file.map((path) => ({ kind: 'file' as const, path }))];
      for (const p of o.port) {
        const port = Number(p);
        if (!Number.isInteger(port) || port < 1 || port > 65535) throw new BulwarkError('usage', `--port '${p}' is not a TCP port`);
        checks.push({ kind: 'port', port });
      }
      const timeout = Number(o.bootTimeout);
      if (!(timeout > 0)) throw new BulwarkError('usage', `--boot-timeout '${o.bootTimeout}' is not a number of seconds`);
      await ctx.withRepo(async (repo) => {
        const r = await verifyBoot(repo, {
          ref,
          filter: { ...(o.host ? { hostname: o.host } : {}), ...(o.source ? { source: o.source } : {}) },
          checks,
          accel: o.accel,
          bootTimeoutMs: timeout * 1000,
          ...(o.kernel ? { kernel: o.kernel } : {}),
        });
        ctx.print(r, (x) =>
          [
            x.ok ? `restore point ${x.snapshot.slice(0, 8)} of ${x.vm} boots: guest agent answered after ${((x.agentMs ?? 0) / 1000).toFixed(1)} s` : `restore point ${x.snapshot.slice(0, 8)} of ${x.vm} FAILED: ${x.reason}`,
            ...x.checks.map((c) => `  ${c.ok ? 'ok  ' : 'FAIL'} ${c.check}: ${c.detail}`),
            ...(x.console ? [`console log kept: ${x.console}`] : []),
          ].join('\n'),
        );
        if (!r.ok) throw new BulwarkError('failed', `restore point ${r.snapshot.slice(0, 8)} did not pass verify-boot: ${r.reason}`, r.console ? { hint: `see its console log: ${r.console}` } : {});
      });
    });
}
