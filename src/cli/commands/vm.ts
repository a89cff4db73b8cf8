// vm list | doctor
import type { Command } from 'commander';
import { endpointsFrom } from '../../hypervisors/registry.js';
import { doctor, inspectVm, type Finding } from '../../jobs/vms.js';
import { BulwarkError } from '../../util/errors.js';
import { Context } from '../context.js';
import { bytes } from '../format.js';
import { table } from '../table.js';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];
export const DEFAULT_SCRATCH_DIR = '/var/tmp';

function findingsText(findings: Finding[]): string {
  if (findings.length === 0) return 'no problems found';
  const order = { error: 0, warning: 1, info: 2 } as const;
  return findings
    .sort((a, b) => order[a.severity] - order[b.severity])
    .map((f) => `${f.severity.toUpperCase().padEnd(7)} ${f.object}: ${f.message}${f.fix ? `\n        fix: ${f.fix}` : ''}`)
    .join('\n');
}

export function register(program: Command): void {
  const vm = program.command('vm').description('virtual machines');
  vm.command('list')
    .description('VMs seen, with state, disks and guest agent status')
    .option('--connect <uri>', 'qmp:/path/qmp.sock[,qga=/path/qga.sock][,name=N] or file:/path/vms.json (repeatable)', collect, [])
    .addHelpText('after', '\nExample:\n  bulwark vm list --connect qmp:/run/qemu/web01.qmp,qga=/run/qemu/web01.qga')
    .action(async (o: { connect: string[] }, cmd: Command) => {
      const ctx = Context.from(cmd);
      const endpoints = await endpointsFrom(o.connect);
      const rows = [];
      for (const e of endpoints) {
        try {
          rows.push(await inspectVm(e));
        } catch (err) {
          rows.push({ name: e.name ?? e.qmp, qmp: e.qmp, status: `unreachable: ${(err as Error).message}`, qemuVersion: '', disks: [], agent: { state: 'not responding' as const } });
        }
      }
      ctx.printData(rows, (vms) =>
        table(
          ['Name', 'State', 'Disks', 'Agent', 'QMP'],
          vms.map((v) => [v.name, v.status, v.disks.map((d) => `${d.name} ${d.format} ${bytes(d.size)}${d.format === 'qcow2' ? ' (incremental)' : ' (full reads)'}`).join(', ') || '-', v.agent.state + ('version' in v.agent && v.agent.version ? ` ${v.agent.version}` : ''), v.qmp]),
        ),
      );
    });

  program
    .command('doctor')
    .description('pre-flight checks for VM backups, each with severity and fix; exit 1 on any error-level finding')
    .argument('[vm...]', 'only these VMs (by name)')
    .option('--connect <uri>', 'qmp:/path/qmp.sock[,qga=…] or file:/path/vms.json (repeatable)', collect, [])
    .option('--scratch-dir <dir>', 'where fleecing images go during backups', DEFAULT_SCRATCH_DIR)
    .addHelpText('after', '\nExample:\n  bulwark doctor --connect file:/etc/bulwark/vms.json --scratch-dir /var/tmp')
    .action(async (names: string[], o: { connect: string[]; scratchDir: string }, cmd: Command) => {
      const ctx = Context.from(cmd);
      let endpoints = await endpointsFrom(o.connect);
      if (names.length > 0) {
        endpoints = endpoints.filter((e) => e.name === undefined || names.includes(e.name));
        if (endpoints.length === 0) throw new BulwarkError('usage', `no VM named ${names.join(', ')} in the given VM list`);
      }
      const repository = ctx.opts.repo ?? process.env['BULWARK_REPOSITORY'];
      const r = await doctor(endpoints, { scratchDir: o.scratchDir, ...(repository ? { repository } : {}) });
      const wanted = names.length > 0 ? r.findings.filter((f) => !r.vms.some((v) => f.object.startsWith(v.name)) || names.some((n) => f.object.startsWith(n))) : r.findings;
      ctx.printData({ vms: r.vms.map((v) => ({ name: v.name, status: v.status, agent: v.agent.state })), findings: wanted }, (d) => findingsText(d.findings));
      if (wanted.some((f) => f.severity === 'error')) process.exitCode = 1;
    });
}
