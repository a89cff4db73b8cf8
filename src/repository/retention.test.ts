import { describe, expect, it } from 'vitest';
import { applyRetention, parseDuration, type RetentionPolicy } from './retention.js';
import type { SnapshotWithId } from './snapshot.js';

/** One snapshot a day at 02:00 local time for `days` days back from 2026-11-27, plus extras. */
function daily(days: number, extra: Partial<SnapshotWithId>[] = []): SnapshotWithId[] {
  const out: SnapshotWithId[] = [];
  for (let i = 0; i < days; i++) {
    const t = new Date(2026, 10, 27 - i, 2, 0, 0);
    out.push(snap(t, i));
  }
  extra.forEach((e, i) => out.push({ ...snap(new Date(e.time!), 1000 + i), ...e }));
  return out;
}

function snap(t: Date, n: number): SnapshotWithId {
  return { version: 1, id: n.toString(16).padStart(64, '0'), time: t.toISOString(), hostname: 'web01', username: 'root', source: 'files', paths: ['/srv'], tags: [], summary: { bytesRead: 0, bytesNew: 0, blobsNew: 0, totalSize: 0, durationMs: 0, warnings: [] } };
}

const kept = (snaps: SnapshotWithId[], p: RetentionPolicy): string[] =>
  applyRetention(snaps, p)
    .flatMap((g) => g.decisions)
    .filter((d) => d.keep)
    .map((d) => new Date(d.snapshot.time).toDateString());

describe('retention', () => {
  it('keeps the N newest with last', () => {
    expect(kept(daily(10), { last: 3 })).toEqual(['Fri Nov 27 2026', 'Thu Nov 26 2026', 'Wed Nov 25 2026']);
  });

  it('daily keeps the newest of each of the N most recent days that have snapshots', () => {
    const snaps = daily(5, [{ time: new Date(2026, 10, 27, 23, 0).toISOString() }]);
    // Two on the 27th: the later one stands for that day.
    const r = applyRetention(snaps, { daily: 2 }).flatMap((g) => g.decisions).filter((d) => d.keep);
    expect(r.map((d) => new Date(d.snapshot.time).getHours())).toEqual([23, 2]);
    expect(r.map((d) => new Date(d.snapshot.time).getDate())).toEqual([27, 26]);
  });

  it('weekly uses ISO weeks (Monday to Sunday), monthly and yearly the calendar', () => {
    const snaps = daily(400);
    const weeks = kept(snaps, { weekly: 3 });
    // Nov 27 2026 is a Friday: this week's newest, then the Sundays before it.
    expect(weeks).toEqual(['Fri Nov 27 2026', 'Sun Nov 22 2026', 'Sun Nov 15 2026']);
    expect(kept(snaps, { monthly: 3 })).toEqual(['Fri Nov 27 2026', 'Sat Oct 31 2026', 'Wed Sep 30 2026']);
    expect(kept(snaps, { yearly: 5 })).toEqual(['Fri Nov 27 2026', 'Wed Dec 31 2025']);
  });

  it('combines rules: a snapshot kept by any rule is kept, with every reason', () => {
    const snaps = daily(40, [{ time: new Date(2026, 5, 1).toISOString(), tags: ['before-upgrade'] }]);
    const groups = applyRetention(snaps, { last: 2, daily: 7, weekly: 4, tags: ['before-upgrade'] });
    const decisions = groups.flatMap((g) => g.decisions);
    expect(decisions.filter((d) => d.keep).length).toBe(7 + 2 + 1); // 7 days (Nov 21–27), the Sundays Nov 15 and 8, the tagged one
    expect(decisions[0]!.reasons).toEqual(['last', 'daily', 'weekly']);
    expect(decisions.find((d) => d.snapshot.tags.includes('before-upgrade'))!.reasons).toEqual(['tag before-upgrade']);
  });

  it('within keeps everything newer than the duration before the newest snapshot', () => {
    expect(kept(daily(10), { withinMs: parseDuration('3d') }).length).toBe(4);
    expect(parseDuration('1y6m')).toBe(365 * 86_400_000 + 180 * 86_400_000);
    expect(() => parseDuration('3 days')).toThrow(/is not a duration/);
  });

  it('groups by host, source and paths: each group keeps its own', () => {
    const a = daily(3);
    const b = daily(3).map((s) => ({ ...s, id: `f${s.id.slice(1)}`, hostname: 'db01' }));
    const groups = applyRetention([...a, ...b], { last: 1 });
    expect(groups.length).toBe(2);
    expect(groups.map((g) => g.decisions.filter((d) => d.keep).length)).toEqual([1, 1]);
    expect(applyRetention([...a, ...b], { last: 1 }, ['source']).length).toBe(1);
  });
});
