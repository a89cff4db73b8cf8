// vm list | doctor
import type { Command } from 'commander';
import { driverFor, expandEndpoints } from '../../hypervisors/drivers.js';
import { addressOf, endpointsFrom, labelOf } from '../../hypervisors/registry.js';
import { doctor, type Finding, type VmInfo } from '../../jobs/vms.js';
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
    .option('--connect <uri>', 'qmp:/path/qmp.sock[,qga=/path/qga.sock|off][,name=N], qemu:///system (libvirt), dir:/path/machine-folder or file:/path/vms.json (repeatable; the agent is found through QEMU without qga=)', collect, [])
    .addHelpText('after', '\nExamples:\n  bulwark vm list --connect qmp:/run/qemu/web01.qmp\n  bulwark vm list --connect qemu:///system')
    .action(async (o: { connect: string[] }, cmd: Command) => {
      const ctx = Context.from(cmd);
      const endpoints = await expandEndpoints(await endpointsFrom(o.connect));
      const rows: VmInfo[] = [];
      for (const e of endpoints) {
        try {
          rows.push(await driverFor(e).describe(e));
        } catch (err) {
          rows.push({ name: labelOf(e), address: addressOf(e), status: `unreachable: ${(err as Error).message}`, qemuVersion: '', disks: [], scratchRule: 'shadow', agent: { state: 'not responding' } });
        }
      }
      ctx.printData(rows, (vms) =>
        table(
          ['Name', 'State', 'Disks', 'Agent', 'Address'],
          vms.map((v) => [v.name, v.status, v.disks.map((d) => `${d.name} ${d.format} ${bytes(d.size)}${d.format === 'qcow2' ? ' (incremental)' : ' (full reads)'}`).join(', ') || '-', v.agent.state + (v.agent.version ? ` ${v.agent.version}` : ''), v.address]),
        ),
      );
    });

  program
    .command('doctor')
    .description('pre-flight checks for VM backups, each with severity and fix; exit 1 on any error-level finding')
    .argument('[vm...]', 'only these VMs (by name)')
    .option('--connect <uri>', 'qmp:/path/qmp.sock[,qga=…], qemu:///system (libvirt), dir:/path/machine-folder or file:/path/vms.json (repeatable)', collect, [])
    .option('--scratch-dir <dir>', 'where fleecing images go during backups', DEFAULT_SCRATCH_DIR)
    .addHelpText('after', '\nExample:\n  bulwark doctor --connect file:/etc/bulwark/vms.json --scratch-dir /var/tmp')
    .action(async (names: string[], o: { connect: string[]; scratchDir: string }, cmd: Command) => {
      const ctx = Context.from(cmd);
      let endpoints = await expandEndpoints(await endpointsFrom(o.connect));
      if (names.length > 0) {
        endpoints = endpoints.filter((e) => e.name === undefined || names.includes(e.name));
        if (endpoints.length === 0) throw new BulwarkError('usage', `no VM named ${names.join(', ')} in the given VM list`);
      }
      const repository = ctx.opts.repo ?? process.env['BULWARK_REPOSITORY'];
      const r = await doctor(driverFor, endpoints, { scratchDir: o.scratchDir, ...(repository ? { repository } : {}) });
      const wanted = names.length > 0 ? r.findings.filter((f) => !r.vms.some((v) => f.object.startsWith(v.name)) || names.some((n) => f.object.startsWith(n))) : r.findings;
      ctx.printData({ vms: r.vms.map((v) => ({ name: v.name, status: v.status, agent: v.agent.state })), findings: wanted }, (d) => findingsText(d.findings));
      if (wanted.some((f) => f.severity === 'error')) process.exitCode = 1;
    });
}
