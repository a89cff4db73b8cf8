// An encrypted (LUKS) qcow2 image made by qemu-img, for tests of how Bulwark refuses what it cannot read.
// qemu-img times PBKDF2 on the thread's CPU clock before it picks an iteration count; on a loaded
// machine the first timing can read 0 ms and qemu-img gives up with "Unable to get accurate CPU
// usage". That is the machine's noise, not the image: try again, a few times.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);
const CPU_NOISE = /Unable to get accurate CPU usage/;

export async function makeLuksQcow2(path: string, size: string, secret = 'x'): Promise<void> {
  const args = ['create', '-q', '--object', `secret,id=s0,data=${secret}`, '-f', 'qcow2',
    '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', path, size];
  for (let attempt = 1; ; attempt++) {
    try {
      await run('qemu-img', args);
      return;
    } catch (e) {
      const stderr = String((e as { stderr?: unknown }).stderr ?? '');
      if (attempt >= 8 || !CPU_NOISE.test(stderr)) throw e;
    }
  }
}
