// The run guardian: makes sure a VM that Bulwark paused or shut down runs again, even when Bulwark dies
// (killed, crashed, out of memory) in the middle. Its parent passes it the QMP connection itself, as
// file descriptor 3: QEMU serves one client per monitor, and a shared connection stays open when the
// parent dies. The guardian does not touch that descriptor while the parent lives; the parent reports
// the phase on stdin. When stdin closes without "done", the guardian takes the connection over and
// acts on the last phase:
//
//   paused     the parent stopped the vCPUs      → cont (if still paused)
//   stopping   a clean shutdown was asked for    → wait for it (up to the stop timeout), then restart
//   down       the guest is shut down, QEMU kept  → restart
//   restarted  the guest boots again              → put the reboot action back once it has booted
//
// Restart: set-action reboot=reset, system_reset, cont, then the VM's own shutdown/reboot actions.
// Its own process group, so killing the backup's group does not take it along. Plain JavaScript: no
// build step. Usage: node run-guardian-child.js <shutdown-action> <reboot-action> <stop-timeout-ms> [<qga-socket>]
import { connect, Socket } from 'node:net';
import { createInterface } from 'node:readline';

const [shutdownAction, rebootAction, stopTimeoutArg, qgaSocket] = process.argv.slice(2);
const stopTimeoutMs = Number(stopTimeoutArg) || 300000;
let phase = 'none';
let done = false;

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const [cmd, arg] = line.trim().split(' ');
  if (cmd === 'phase' && arg) phase = arg;
  else if (cmd === 'done') done = true;
});
rl.on('close', () => {
  if (done || phase === 'none') process.exit(0);
  takeOver().then(
    () => process.exit(0),
    (err) => {
      process.stderr.write(`run guardian: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Whether the guest agent answers a ping within 2 s: the guest has booted. */
function agentAnswers() {
  return new Promise((resolve) => {
    const s = connect(qgaSocket);
    let buf = '';
    const finish = (ok) => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), 2000);
    s.on('error', () => finish(false));
    s.on('connect', () => s.write('{"execute":"guest-ping"}\n'));
    s.on('data', (d) => {
      buf += d.toString();
      if (buf.includes('"return"')) finish(true);
    });
  });
}

async function takeOver() {
  const sock = new Socket({ fd: 3, readable: true, writable: true });
  let buf = '';
  const waiters = new Map();
  let seq = 0;
  sock.setEncoding('utf8');
  sock.on('data', (chunk) => {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        continue; // the tail of a message the parent was reading when it died
      }
      const w = typeof msg.id === 'string' ? waiters.get(msg.id) : undefined;
      if (!w) continue; // events, and replies to the parent's commands
      waiters.delete(msg.id);
      if (msg.error) w.reject(new Error(`${msg.error.class}: ${msg.error.desc}`));
      else w.resolve(msg.return);
    }
  });
  const closed = new Promise((_, reject) => sock.on('close', () => reject(new Error('QMP connection closed (QEMU exited?)'))));
  closed.catch(() => undefined);
  const qmp = (execute, args) => {
    const id = `run-guardian-${++seq}`;
    const p = new Promise((resolve, reject) => waiters.set(id, { resolve, reject }));
    // A newline first ends whatever partial command the parent may have been writing.
    sock.write(`\n${JSON.stringify(args ? { execute, arguments: args, id } : { execute, id })}\n`);
    return Promise.race([p, closed, sleep(10000).then(() => Promise.reject(new Error(`no reply to ${execute}`)))]);
  };
  const status = async () => (await qmp('query-status')).status;

  if (phase === 'paused') {
    if ((await status()) === 'paused') await qmp('cont');
    process.stderr.write('run guardian: resumed the VM\n');
    return;
  }
  if (phase === 'stopping') {
    const end = Date.now() + stopTimeoutMs;
    while ((await status()) !== 'shutdown') {
      if (Date.now() > end) {
        await qmp('set-action', { shutdown: shutdownAction });
        return;
      }
      await sleep(500);
    }
    phase = 'down';
  }
  if (phase === 'down') {
    await qmp('set-action', { reboot: 'reset' });
    await qmp('system_reset');
    for (let i = 0; ; i++) {
      try {
        await qmp('cont');
        break;
      } catch (err) {
        if (i >= 100) throw err;
        await sleep(50);
      }
    }
    await qmp('set-action', { shutdown: shutdownAction });
    process.stderr.write('run guardian: started the VM again\n');
    phase = 'restarted';
  }
  if (phase === 'restarted' && rebootAction !== 'reset') {
    // Firmware may reset the machine while it starts; under -no-reboot that would end QEMU. Wait
    // for the guest to be up (its agent answers; 30 s without an agent, 120 s at most).
    const end = Date.now() + (qgaSocket ? 120000 : 30000);
    while (Date.now() < end && !(qgaSocket && (await agentAnswers()))) await sleep(1000);
    await qmp('set-action', { reboot: rebootAction });
  }
}
