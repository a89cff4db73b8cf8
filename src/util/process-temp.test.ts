import { existsSync, mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers/repo.js';
import { makeProcessTempDir } from './process-temp.js';

let root: { path: string; cleanup(): Promise<void> };
beforeEach(async () => {
  root = await tempDir();
});
afterEach(async () => root.cleanup());

describe('process temp folders', () => {
  it("removes this host's folders of dead processes, and nothing else", () => {
    const host = hostname().replace(/[^A-Za-z0-9.-]/g, '_');
    // No process has pid 2^22 + 1 (above Linux's pid_max limit).
    const dead = `${root.path}/.x-${2 ** 22 + 1}@${host}-abcdef`;
    const alive = `${root.path}/.x-1@${host}-abcdef`;
    const otherHost = `${root.path}/.x-${2 ** 22 + 1}@${host}-7-abcdef`;
    const otherPrefix = `${root.path}/.y-${2 ** 22 + 1}@${host}-abcdef`;
    for (const d of [dead, alive, otherHost, otherPrefix]) mkdirSync(d);
    const mine = makeProcessTempDir('.x-', root.path);
    expect(mine).toMatch(new RegExp(`/\\.x-${process.pid}@`));
    expect(existsSync(dead)).toBe(false);
    for (const d of [alive, otherHost, otherPrefix, mine]) expect(existsSync(d), d).toBe(true);
  });
});
