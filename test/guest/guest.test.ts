import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { QgaClient } from '../../src/protocols/qga/client.js';
import { ensureGuestBuilt, makeDataDisk, readFileFromExt4Image, readHookLog, startGuest, verifyWriterLog, writerRecord, type RunningGuest } from './guest.js';

const RUN = '4b7da910';
const pay = (i: number): string => (String(i).repeat(56) + 'x'.repeat(56)).slice(0, 56);
const records = (from: number, to: number, run = RUN): string[] => {
  const out: string[] = [];
  for (let i = from; i <= to; i++) out.push(writerRecord(i, run, pay(i)));
  return out;
};
const log = (...lines: string[]): string => lines.join('\n') + '\n';

describe('verifyWriterLog', () => {
  it('accepts a line written by the guest writer (busybox awk)', () => {
    // Captured from the writer: guards against the TS checksum drifting from the awk one.
    const line = '1 4b7da910:zL4pIU5L4M774rNmhkFkDT5sesG1iSoESy3Pv9qVub8zTMr6G0ULSMJR 2cadcc23';
    expect(verifyWriterLog(log(`#run ${RUN} 1795587714`, line))).toMatchObject({ records: 1, torn: 0, ok: true, lastSeq: 1 });
    expect(verifyWriterLog(log(`#run ${RUN} 1795587714`, line.replace('zL4', 'zL5'))).torn).toBe(1);
  });

  it('counts a clean log', () => {
    const r = verifyWriterLog(log(`#run ${RUN} 1700000000`, ...records(1, 50)));
    expect(r).toEqual({ records: 50, torn: 0, seqBreaks: 0, incompleteTail: false, interruptedRuns: 0, runs: 1, lastSeq: 50, ok: true });
  });

  it('reports a torn record in the middle as corruption', () => {
    const lines = [`#run ${RUN} 1700000000`, ...records(1, 20)];
    lines[8] = lines[8]!.slice(0, 30); // record 8 cut short, the rest follows
    const r = verifyWriterLog(log(...lines));
    expect(r.torn).toBe(1);
    expect(r.ok).toBe(false);
    expect(r.incompleteTail).toBe(false);
    expect(r.firstBad).toMatch(/^line 9: damaged record/);
    // Record 9 follows the torn 8: a seq break too, which is the point (record 8 is lost).
    expect(r.seqBreaks).toBe(1);
  });

  it('reports a flipped byte in the middle (checksum mismatch)', () => {
    const lines = [`#run ${RUN} 1700000000`, ...records(1, 5)];
    lines[3] = lines[3]!.replace(/:(.)/, (_m, c: string) => `:${c === 'a' ? 'b' : 'a'}`);
    const r = verifyWriterLog(log(...lines));
    expect(r).toMatchObject({ torn: 1, records: 4, ok: false });
    expect(r.firstBad).toMatch(/checksum mismatch/);
  });

  it('reports a gap in the sequence', () => {
    const r = verifyWriterLog(log(`#run ${RUN} 1700000000`, ...records(1, 5), ...records(7, 9)));
    expect(r).toMatchObject({ torn: 0, seqBreaks: 1, records: 8, ok: false });
    expect(r.firstBad).toMatch(/seq 7, expected 6/);
  });

  it('treats a partial last record as a legitimate incomplete tail', () => {
    const whole = log(`#run ${RUN} 1700000000`, ...records(1, 10));
    const cut = whole + writerRecord(11, RUN, pay(11)).slice(0, 40);
    expect(verifyWriterLog(cut)).toMatchObject({ records: 10, torn: 0, incompleteTail: true, ok: true });
    // ext4 may expose zeros past the last written byte after a crash.
    expect(verifyWriterLog(whole + '11 4b7d' + '\0'.repeat(100))).toMatchObject({ torn: 0, incompleteTail: true, ok: true });
    expect(verifyWriterLog(whole + '\0'.repeat(4096))).toMatchObject({ records: 10, incompleteTail: true, ok: true });
  });

  it('does not take a whole last record with a bad checksum for a truncation', () => {
    const bad = writerRecord(3, RUN, pay(3)).replace(/.$/, (c) => (c === '0' ? '1' : '0'));
    expect(verifyWriterLog(log(`#run ${RUN} 1700000000`, ...records(1, 2)) + bad)).toMatchObject({ torn: 1, incompleteTail: false, ok: false });
  });

  it('accepts a run interrupted mid-record and a new run after it', () => {
    const r = verifyWriterLog(
      log(`#run ${RUN} 1700000000`, ...records(1, 5), writerRecord(6, RUN, pay(6)).slice(0, 20), `#run 0000beef 1700000100`, ...records(1, 3, '0000beef')),
    );
    expect(r).toMatchObject({ runs: 2, records: 8, torn: 0, interruptedRuns: 1, lastSeq: 3, ok: true });
  });

  it('rejects a record of another run without a run marker', () => {
    const r = verifyWriterLog(log(`#run ${RUN} 1700000000`, ...records(1, 3), ...records(4, 4, '0000beef'), ...records(4, 5)));
    expect(r.torn).toBe(1);
    expect(r.firstBad).toMatch(/run 0000beef inside run 4b7da910/);
  });
});

describe('readHookLog', () => {
  it('parses freeze/thaw lines and counts the rest as malformed', () => {
    const h = readHookLog('freeze 1795587700 6.89\nthaw 1795587700 6.96\nfreeze 1795587701 7.50\nthaw 17955');
    expect(h).toMatchObject({ freezes: 2, thaws: 1, last: 'freeze', malformed: 1 });
    expect(h.events[0]).toEqual({ action: 'freeze', epochSeconds: 1795587700, uptimeSeconds: 6.89 });
  });
});

describe('data disks', () => {
  it('makes a raw ext4 image the host can read files from', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-disk-'));
    try {
      const fill = path.join(dir, 'fill');
      await fs.mkdir(path.join(fill, 'sub dir'), { recursive: true });
      await fs.writeFile(path.join(fill, 'sub dir', 'a.txt'), 'hello\n');
      await makeDataDisk(path.join(dir, 'd.raw'), { sizeMiB: 8, format: 'raw', fill });
      expect((await fs.stat(path.join(dir, 'd.raw'))).size).toBe(8 * 1024 * 1024);
      expect((await readFileFromExt4Image(path.join(dir, 'd.raw'), '/sub dir/a.txt')).toString()).toBe('hello\n');
      expect((await fs.readdir(dir)).sort()).toEqual(['d.raw', 'fill']);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('the test guest', () => {
  let dir: string;
  let guest: RunningGuest | undefined;
  const disk = (): string => path.join(dir, 'data.qcow2');

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-guest-'));
    const image = await ensureGuestBuilt();
    await makeDataDisk(disk(), { sizeMiB: 64, format: 'qcow2', fill: image.sampleDir });
    guest = await startGuest({ dir, name: 'guest-test', disks: [{ path: disk(), format: 'qcow2' }], writer: { kibPerSec: 64 } });
    console.log(`guest-test: ${guest.accel} boot-to-agent ${guest.bootToAgentMs} ms`);
  });

  afterAll(async () => {
    await guest?.stop();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('runs a writer that keeps appending valid records', async () => {
    const qga = await QgaClient.connect(guest!.qgaSocket);
    try {
      const first = verifyWriterLog(await qga.readFile('/data/log.txt'));
      await sleep(1500);
      const second = verifyWriterLog(await qga.readFile('/data/log.txt'));
      expect(first.ok, first.firstBad).toBe(true);
      expect(second.ok, second.firstBad).toBe(true);
      // 64 KiB/s of ~78-byte records is ~840 a second; demand a fraction of that under load.
      expect(second.lastSeq - first.lastSeq).toBeGreaterThan(200);
      expect(second.runs).toBe(1);
    } finally {
      await qga.close();
    }
  });

  it('leaves a data disk the host can read after the guest stops', async () => {
    // A freeze flushes the guest's page cache, so every record the guest showed before it is on disk.
    // Without it, how much of the log reaches the disk before QEMU quits depends on the guest's speed.
    const qga = await QgaClient.connect(guest!.qgaSocket);
    let flushed: number;
    try {
      flushed = verifyWriterLog(await qga.readFile('/data/log.txt')).records;
      await qga.execute('guest-fsfreeze-freeze', undefined, { timeoutMs: 60_000 });
      await qga.execute('guest-fsfreeze-thaw', undefined, { timeoutMs: 60_000 });
    } finally {
      await qga.close();
    }
    expect(flushed).toBeGreaterThan(200);
    await guest!.stop();
    expect(guest!.alive()).toBe(false);
    const image = await ensureGuestBuilt();
    const config = await readFileFromExt4Image(disk(), '/kernel-config.txt');
    expect(config.equals(await fs.readFile(path.join(image.sampleDir, 'kernel-config.txt')))).toBe(true);
    // QEMU quit without the guest unmounting: the journal is replayed on a copy.
    const r = verifyWriterLog(await readFileFromExt4Image(disk(), '/log.txt'));
    expect(r.ok, r.firstBad).toBe(true);
    expect(r.records).toBeGreaterThanOrEqual(flushed);
    await expect(readFileFromExt4Image(disk(), '/no-such-file')).rejects.toThrow(/not found/i);
  });
});
