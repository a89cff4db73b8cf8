// The freeze guardian: a separate process that holds the guest agent connection, freezes and thaws
// on its parent's command, and thaws by itself when the parent goes away (its stdin closes: killed,
// crashed, out of memory) or when a freeze outlives the deadline. It runs in its own process group,
// so killing the backup's group does not take it along. Plain JavaScript: no build step, from src/
// and dist/ alike. Usage: node guardian-child.js <qga-socket> <deadline-ms> <call-timeout-ms>
import { connect } from 'node:net';
import { createInterface } from 'node:readline';

const [socketPath, deadlineArg, timeoutArg] = process.argv.slice(2);
const deadlineMs = Number(deadlineArg) || 10000;
const callTimeoutMs = Number(timeoutArg) || 10000;

let sock;
let buf = Buffer.alloc(0);
let waiter; // { resolve, reject, timer, sync }
let frozen = false;
let deadlineTimer;
let exiting = false;
let needSync = true;

function send(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function onData(chunk) {
  buf = Buffer.concat([buf, chunk]);
  if (waiter?.sync) {
    const i = buf.indexOf(0xff);
    if (i < 0) return;
    buf = buf.subarray(i + 1);
    waiter.sync = false;
  }
  for (;;) {
    const nl = buf.indexOf(0x0a);
    if (nl < 0) return;
    const line = buf.subarray(0, nl).toString('utf8').trim();
    buf = buf.subarray(nl + 1);
    if (!line || !waiter) continue;
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      continue;
    }
    if (!('return' in msg) && !('error' in msg)) continue;
    const w = waiter;
    waiter = undefined;
    clearTimeout(w.timer);
    if (msg.error) w.reject(new Error(`${msg.error.class}: ${msg.error.desc}`));
    else w.resolve(msg.return);
  }
}

function ensureSocket() {
  if (sock && !sock.destroyed) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const s = connect(socketPath);
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`no guest agent at ${socketPath} (connect timed out)`));
    }, callTimeoutMs);
    s.once('connect', () => {
      clearTimeout(t);
      sock = s;
      needSync = true;
      s.on('data', onData);
      s.on('close', () => {
        if (waiter) {
          clearTimeout(waiter.timer);
          waiter.reject(new Error('guest agent connection closed'));
          waiter = undefined;
        }
      });
      resolve();
    });
    s.once('error', (err) => {
      clearTimeout(t);
      reject(new Error(`cannot connect to guest agent at ${socketPath}: ${err.message}`));
    });
  });
}

function request(obj, sync) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      waiter = undefined;
      needSync = true; // a late reply may still come: skip it with a fresh sync next time
      reject(new Error(`guest agent did not answer ${obj.execute} within ${callTimeoutMs} ms`));
    }, callTimeoutMs);
    waiter = { resolve, reject, timer, sync };
    if (sync) sock.write(Buffer.from([0xff]));
    sock.write(JSON.stringify(obj) + '\n');
  });
}

// One agent command at a time, in order.
let chain = Promise.resolve();
function call(execute, args) {
  const p = chain.then(async () => {
    await ensureSocket();
    if (needSync) {
      const id = Math.floor(Math.random() * 2 ** 31);
      buf = Buffer.alloc(0);
      const got = await request({ execute: 'guest-sync-delimited', arguments: { id } }, true);
      if (got !== id) throw new Error('guest agent sync failed');
      needSync = false;
    }
    return request(args ? { execute, arguments: args } : { execute }, false);
  });
  chain = p.catch(() => undefined);
  return p;
}

async function thaw() {
  clearTimeout(deadlineTimer);
  const n = await call('guest-fsfreeze-thaw');
  frozen = false;
  return n;
}

async function thawAndExit(reason) {
  if (exiting) return;
  exiting = true;
  // Keep trying for a while: a guest that was slow to answer may answer later.
  for (let i = 0; i < 30; i++) {
    try {
      const status = await call('guest-fsfreeze-status');
      if (status === 'thawed') break;
      await thaw();
      process.stderr.write(`guardian: thawed the guest (${reason})\n`);
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  process.exit(0);
}

const handlers = {
  async ping() {
    return call('guest-ping');
  },
  async info() {
    return call('guest-info');
  },
  async status() {
    return call('guest-fsfreeze-status');
  },
  async freeze() {
    frozen = true; // a freeze that times out may still happen in the guest: treat it as frozen
    deadlineTimer = setTimeout(() => void thawAndExit(`freeze exceeded ${deadlineMs} ms`), deadlineMs);
    return call('guest-fsfreeze-freeze');
  },
  async thaw() {
    return thaw();
  },
  async exists(req) {
    try {
      const h = await call('guest-file-open', { path: req.path, mode: 'r' });
      await call('guest-file-close', { handle: h });
      return true;
    } catch {
      return false;
    }
  },
};

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let req;
  try {
    req = JSON.parse(line);
  } catch {
    return;
  }
  const h = handlers[req.cmd];
  if (!h) return send({ id: req.id, error: `unknown command ${req.cmd}` });
  h(req).then(
    (result) => send({ id: req.id, result }),
    (err) => send({ id: req.id, error: err.message }),
  );
});
rl.on('close', () => void (frozen ? thawAndExit('parent went away') : process.exit(0)));
process.stdout.on('error', () => void thawAndExit('parent went away'));
