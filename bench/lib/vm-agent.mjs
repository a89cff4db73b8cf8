// Talks to the test guest's qemu-guest-agent for bench/vm.sh, either straight over the unix socket
// QEMU serves (plain QEMU, as Bulwark sees the guest) or through libvirt (`virsh
// qemu-agent-command`, for the guest libvirt runs). Self-contained: does not load Bulwark's code.
//
//   node vm-agent.mjs ping <target> <timeout-s>            until guest-ping answers (boot wait)
//   node vm-agent.mjs exec <target> <timeout-s> <argv>...  guest-exec, wait, print its stdout/stderr,
//                                                          exit with its exit code
//
// <target>: a socket path, or virsh:<domain>. The socket serves one client at a time: this holds it
// only for one command and lets go.
import { Buffer } from 'node:buffer';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import process from 'node:process';
import { clearTimeout, setTimeout } from 'node:timers';
import { setTimeout as sleep } from 'node:timers/promises';

const [mode, target, timeoutArg, ...argv] = process.argv.slice(2);
if (!mode || !target || !timeoutArg) {
  process.stderr.write('usage: vm-agent.mjs ping|exec <socket|virsh:DOMAIN> <timeout-s> [argv...]\n');
  process.exit(2);
}
const deadline = Date.now() + Number(timeoutArg) * 1000;
const left = () => Math.max(1, deadline - Date.now());

/** One agent command; resolves with its "return" value, rejects with its error or a timeout. */
async function call(execute, args, timeoutMs) {
  const msg = JSON.stringify(args === undefined ? { execute } : { execute, arguments: args });
  if (target.startsWith('virsh:')) {
    const secs = Math.max(5, Math.ceil(timeoutMs / 1000));
    const r = spawnSync('virsh', ['-c', 'qemu:///system', 'qemu-agent-command', target.slice(6), '--timeout', String(secs), msg], {
      encoding: 'utf8',
      timeout: timeoutMs + 5000,
    });
    if (r.status !== 0) throw new Error(`virsh qemu-agent-command ${execute}: ${(r.stderr || r.error?.message || '').trim()}`);
    const reply = JSON.parse(r.stdout);
    if (reply.error) throw new Error(`${execute}: ${reply.error.desc}`);
    return reply.return;
  }
  return socketCall(msg, execute, timeoutMs);
}

// guest-sync-delimited first: the channel may hold bytes of an earlier client; the agent answers
// 0xFF then {"return": id}, and what follows is the answer to our command.
function socketCall(msg, execute, timeoutMs) {
  return new Promise((resolve, reject) => {
    const id = Math.floor(Math.random() * 1e9);
    const sock = net.connect(target);
    let buf = Buffer.alloc(0);
    let synced = false;
    const timer = setTimeout(() => finish(new Error(`${execute}: no answer within ${timeoutMs} ms`)), timeoutMs);
    function finish(err, value) {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(value);
    }
    sock.on('error', (err) => finish(err));
    sock.on('connect', () => {
      sock.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } }) + '\n')]));
    });
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (!synced) {
          const ff = buf.lastIndexOf(0xff);
          if (ff < 0) {
            buf = Buffer.alloc(0);
            return;
          }
          const nl = buf.indexOf(0x0a, ff);
          if (nl < 0) return;
          let reply;
          try {
            reply = JSON.parse(buf.subarray(ff + 1, nl).toString());
          } catch {
            reply = undefined;
          }
          buf = buf.subarray(nl + 1);
          if (reply?.return === id) {
            synced = true;
            sock.write(msg + '\n');
          }
          continue;
        }
        const nl = buf.indexOf(0x0a);
        if (nl < 0) return;
        const line = buf.subarray(0, nl).toString().trim();
        buf = buf.subarray(nl + 1);
        if (line === '') continue;
        let reply;
        try {
          reply = JSON.parse(line);
        } catch {
          continue;
        }
        if (reply.error) finish(new Error(`${execute}: ${reply.error.desc} (${reply.error.class})`));
        else finish(undefined, reply.return);
        return;
      }
    });
  });
}

if (mode === 'ping') {
  let last;
  while (Date.now() < deadline) {
    try {
      await call('guest-ping', undefined, Math.min(5000, left()));
      process.exit(0);
    } catch (err) {
      last = err;
      await sleep(500);
    }
  }
  process.stderr.write(`guest agent did not answer within ${timeoutArg} s: ${last?.message ?? 'timeout'}\n`);
  process.exit(1);
} else if (mode === 'exec') {
  if (argv.length === 0) {
    process.stderr.write('exec needs a command\n');
    process.exit(2);
  }
  try {
    const { pid } = await call('guest-exec', { path: argv[0], arg: argv.slice(1), 'capture-output': true }, Math.min(30000, left()));
    for (;;) {
      if (Date.now() >= deadline) throw new Error(`guest command did not finish within ${timeoutArg} s: ${argv.join(' ')}`);
      const st = await call('guest-exec-status', { pid }, Math.min(30000, left()));
      if (st.exited) {
        if (st['out-data']) process.stdout.write(Buffer.from(st['out-data'], 'base64'));
        if (st['err-data']) process.stderr.write(Buffer.from(st['err-data'], 'base64'));
        process.exit(st.exitcode ?? (st.signal !== undefined ? 128 + st.signal : 1));
      }
      await sleep(250);
    }
  } catch (err) {
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  }
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
