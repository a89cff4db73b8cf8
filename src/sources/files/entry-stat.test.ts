// The native listing and stat must say exactly what Node's own calls say (the witness here), for every
// kind of entry, and fail the way Node fails.
import { execFileSync } from 'node:child_process';
import { closeSync, lstatSync, mkdirSync, mkdtempSync, openSync, rmSync, symlinkSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compareNames } from '../../repository/tree.js';
import { nativeHelpers } from '../../util/native.js';
import { fromNode, fstatEntry, listFolder, lstatEntry, type EntryStat } from './entry-stat.js';

let dir: string;

/** What Node's BigInt lstat says, in EntryStat's terms. */
function nodeSays(path: string | Buffer): EntryStat {
  return fromNode(lstatSync(path, { bigint: true }));
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'bw-entry-stat-'));
  writeFileSync(join(dir, 'file'), 'hello');
  writeFileSync(join(dir, 'old'), 'x');
  // Before 1970 and with nanoseconds: the times' text must match BigInt's, sign and all.
  execFileSync('touch', ['-h', '-d', '1969-12-30 12:00:00.123456789 UTC', join(dir, 'old')]);
  mkdirSync(join(dir, 'sub'));
  symlinkSync('file', join(dir, 'link'));
  symlinkSync('/nowhere', join(dir, 'dangling'));
  execFileSync('mkfifo', [join(dir, 'fifo')]);
  writeFileSync(Buffer.concat([Buffer.from(dir + '/'), Buffer.from([0x66, 0xff, 0xfe])]), 'not UTF-8');
  writeFileSync(join(dir, 'Zed'), '');
  writeFileSync(join(dir, 'tagged'), 'with an xattr');
  execFileSync('setfattr', ['-n', 'user.bulwark.test', '-v', 'yes', join(dir, 'tagged')]);
  writeFileSync(join(dir, 'äpfel'), '');
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('entry status', () => {
  it('is built and in use (else these tests would compare Node with itself)', () => {
    expect(nativeHelpers()?.scanDir, 'native/build/Release/bulwark_native.node did not load').toBeTypeOf('function');
  });

  for (const [label, helpers] of [
    ['native', undefined],
    ['without the helper', null],
  ] as const) {
    describe(label, () => {
      it('lists a folder in byte order, every entry as Node stats it', () => {
        const listing = listFolder(Buffer.from(dir), helpers);
        const expected = readdirSync(dir, { encoding: 'buffer' }).sort(compareNames);
        expect(listing.names.map((n) => n.toString('hex'))).toEqual(expected.map((n) => n.toString('hex')));
        listing.names.forEach((name, i) => {
          const { xattrListBytes: _x, ...st } = listing.stat(i) ?? lstatEntry(Buffer.concat([Buffer.from(dir + '/'), name]), helpers);
          expect(st, name.toString()).toEqual(nodeSays(Buffer.concat([Buffer.from(dir + '/'), name])));
        });
      });

      it('tells which entries have extended attributes, or does not claim to know', () => {
        const listing = listFolder(Buffer.from(dir), helpers);
        const xattrBytes = (n: string): number | undefined => listing.stat(listing.names.findIndex((b) => b.toString() === n))?.xattrListBytes;
        if (helpers === null) {
          expect(xattrBytes('tagged')).toBeUndefined();
          expect(xattrBytes('file')).toBeUndefined();
        } else {
          // The witness: the attribute names getfattr lists, each with its NUL.
          const names = execFileSync('getfattr', ['--absolute-names', '-m', '-', join(dir, 'tagged')]).toString().split('\n').filter((l) => l && !l.startsWith('#'));
          expect(names).toContain('user.bulwark.test');
          expect(xattrBytes('tagged')).toBe(names.reduce((n, x) => n + Buffer.byteLength(x) + 1, 0));
          expect(xattrBytes('file')).toBe(0);
          expect(xattrBytes('link')).toBe(0);
        }
      });

      it('stats a path without following a symlink, and an open file', () => {
        for (const name of ['file', 'old', 'sub', 'link', 'dangling', 'fifo']) expect(lstatEntry(Buffer.from(join(dir, name)), helpers)).toEqual(nodeSays(join(dir, name)));
        expect(nodeSays(join(dir, 'old')).mtimeNs.startsWith('-')).toBe(true);
        const fd = openSync(join(dir, 'file'), 'r');
        try {
          expect(fstatEntry(fd, helpers)).toEqual(nodeSays(join(dir, 'file')));
        } finally {
          closeSync(fd);
        }
      });

      it("fails with Node's own errors", () => {
        expect(() => lstatEntry(Buffer.from(join(dir, 'missing')), helpers)).toThrow(expect.objectContaining({ code: 'ENOENT', syscall: 'lstat' }));
        expect(() => listFolder(Buffer.from(join(dir, 'missing')), helpers)).toThrow(expect.objectContaining({ code: 'ENOENT' }));
        expect(() => listFolder(Buffer.from(join(dir, 'file')), helpers)).toThrow(expect.objectContaining({ code: 'ENOTDIR' }));
        expect(() => fstatEntry(123_456, helpers)).toThrow(expect.objectContaining({ code: 'EBADF' }));
      });
    });
  }
});
