import { describe, expect, it } from 'vitest';
import { actionsOfCommandLine } from './power.js';

describe('actionsOfCommandLine', () => {
  it('defaults to poweroff and reset', () => {
    expect(actionsOfCommandLine(['qemu-system-x86_64', '-m', '256'])).toEqual({ shutdown: 'poweroff', reboot: 'reset' });
  });
  it('reads -no-shutdown, -no-reboot and -action', () => {
    expect(actionsOfCommandLine(['qemu-system-x86_64', '-no-reboot', '--no-shutdown'])).toEqual({ shutdown: 'pause', reboot: 'shutdown' });
    expect(actionsOfCommandLine(['qemu', '-action', 'reboot=shutdown,shutdown=pause,panic=none'])).toEqual({ shutdown: 'pause', reboot: 'shutdown' });
  });
});
