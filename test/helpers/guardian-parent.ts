// Stands in for Bulwark in the guardian's tests: opens the VM's QMP connection, starts its guardian,
// then does what its stdin says ('freeze', 'thaw', 'phase paused', 'release'), answering each on
// stdout as a JSON line, so a test can SIGKILL it at a known moment.
//   node --import tsx test/helpers/guardian-parent.ts QMP_SOCKET QGA_SOCKET LOG_DIR FREEZE_DEADLINE_MS
import { createInterface } from 'node:readline';
import { Guardian, type GuardianPhase } from '../../src/hypervisors/guardian.js';
import { QmpClient } from '../../src/protocols/qmp/client.js';

const [qmpSocket, qgaSocket, logDir, deadline] = process.argv.slice(2) as [string, string, string, string];
const say = (o: Record<string, unknown>): void => void process.stdout.write(JSON.stringify(o) + '\n');
const qmp = await QmpClient.connect(qmpSocket);
const guardian = Guardian.start(
  { vm: 'fake', target: { kind: 'qemu', qga: qgaSocket, qmp: true, actions: { shutdown: 'poweroff', reboot: 'reset' } }, freezeDeadlineMs: Number(deadline), agentTimeoutMs: 2000, stopTimeoutMs: 5000 },
  { qmpFd: qmp.socketForWatchdog(), logDir, onLog: (log) => say({ log }) },
);
say({ ready: guardian.pid });
createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, arg] = line.trim().split(' ');
  const done = (p: Promise<unknown>): void => void p.then((result) => say({ cmd, result: result ?? null }), (err: unknown) => say({ cmd, error: (err as Error).message }));
  if (cmd === 'freeze') done(guardian.agent.freeze());
  else if (cmd === 'thaw') done(guardian.agent.thaw());
  else if (cmd === 'phase') {
    guardian.phase(arg as GuardianPhase);
    say({ cmd, result: arg });
  } else if (cmd === 'release') done(guardian.release().then(() => qmp.close()));
}).on('close', () => process.exit(0));
