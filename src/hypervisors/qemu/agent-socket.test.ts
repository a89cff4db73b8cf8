import { describe, expect, it } from 'vitest';
import { listeningUnixPath } from './agent-socket.js';

describe('the agent chardev as query-chardev shows it', () => {
  it('gives the path of a unix socket QEMU listens on, connected or not', () => {
    // As QEMU 7.2 prints them (seen with the test guest's command line).
    expect(listeningUnixPath('disconnected:unix:/run/vm/qga.sock,server=on')).toBe('/run/vm/qga.sock');
    expect(listeningUnixPath('unix:/run/vm/qga.sock,server=on')).toBe('/run/vm/qga.sock');
    expect(listeningUnixPath('unix:/run/vm/qga.sock,server')).toBe('/run/vm/qga.sock');
  });
  it('refuses what Bulwark cannot connect to', () => {
    expect(listeningUnixPath('unix:/run/vm/qga.sock')).toBeUndefined(); // QEMU connects out
    expect(listeningUnixPath('pty:/dev/pts/3')).toBeUndefined();
    expect(listeningUnixPath('disconnected:tcp:127.0.0.1:4444,server=on')).toBeUndefined();
  });
});
