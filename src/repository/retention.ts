// Retention policies (grandfather-father-son), as administrators know them from restic and borg: within
// each group of snapshots, newest first, `last N` keeps the N newest, `hourly N` keeps the newest
// snapshot of each of the N most recent hours that have one (and so on for days, ISO weeks, months and
// years), `within D` keeps everything newer than D before the group's newest snapshot, and `tags` keeps
// every snapshot carrying one of them. A snapshot any rule keeps is kept; the reasons are recorded so an
// administrator can see why. Calendar periods are in local time, as people read their schedules.
import { BulwarkError } from '../util/errors.js';
import type { SnapshotWithId } from './snapshot.js';

export interface RetentionPolicy {
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
  /** Milliseconds before the group's newest snapshot. */
  withinMs?: number;
  tags?: string[];
}

export type GroupKey = 'host' | 'source' | 'paths' | 'tags';

export interface RetentionDecision {
  snapshot: SnapshotWithId;
  keep: boolean;
  reasons: string[];
}

export interface RetentionGroup {
  /** What the group's snapshots share, e.g. {host: "web01", source: "files"}. */
  key: Record<string, string>;
  decisions: RetentionDecision[];
}

const PERIODS = ['hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;

export function isEmptyPolicy(p: RetentionPolicy): boolean {
  return p.last === undefined && PERIODS.every((k) => p[k] === undefined) && p.withinMs === undefined && (p.tags ?? []).length === 0;
}

/** ISO 8601 week of a local date: weeks start on Monday, and belong to the year of their Thursday. */
function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getFullYear(), d.getMonth(), d.getDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  return `${t.getUTCFullYear()}-W${Math.ceil(((t.getTime() - yearStart) / 86_400_000 + 1) / 7)}`;
}

function bucket(period: (typeof PERIODS)[number], d: Date): string {
  const y = d.getFullYear();
  const m = d.getMonth() + 1;
  switch (period) {
    case 'hourly':
      return `${y}-${m}-${d.getDate()} ${d.getHours()}`;
    case 'daily':
      return `${y}-${m}-${d.getDate()}`;
    case 'weekly':
      return isoWeek(d);
    case 'monthly':
      return `${y}-${m}`;
    case 'yearly':
      return `${y}`;
  }
}

function groupKeyOf(s: SnapshotWithId, by: readonly GroupKey[]): Record<string, string> {
  const key: Record<string, string> = {};
  for (const k of by) {
    if (k === 'host') key['host'] = s.hostname;
    else if (k === 'source') key['source'] = s.source;
    else if (k === 'paths') key['paths'] = [...s.paths].sort().join(',');
    else key['tags'] = [...s.tags].sort().join(',');
  }
  return key;
}

/** Applies the policy to each group separately; groups and decisions come newest first. */
export function applyRetention(snapshots: readonly SnapshotWithId[], policy: RetentionPolicy, groupBy: readonly GroupKey[] = ['host', 'source', 'paths']): RetentionGroup[] {
  for (const [name, v] of Object.entries(policy)) {
    if (name === 'tags') continue;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new BulwarkError('usage', `--keep-${name === 'withinMs' ? 'within' : name} takes a whole number of at least 0`);
  }
  const groups = new Map<string, { key: Record<string, string>; list: SnapshotWithId[] }>();
  for (const s of snapshots) {
    const key = groupKeyOf(s, groupBy);
    const k = JSON.stringify(key);
    let g = groups.get(k);
    if (!g) groups.set(k, (g = { key, list: [] }));
    g.list.push(s);
  }
  const out: RetentionGroup[] = [];
  for (const { key, list } of groups.values()) {
    const newestFirst = [...list].sort((a, b) => Date.parse(b.time) - Date.parse(a.time) || b.id.localeCompare(a.id));
    const decisions = newestFirst.map((snapshot) => ({ snapshot, keep: false, reasons: [] as string[] }));
    const keep = (d: RetentionDecision, reason: string): void => {
      d.keep = true;
      d.reasons.push(reason);
    };
    if (policy.last !== undefined) decisions.slice(0, policy.last).forEach((d) => keep(d, 'last'));
    for (const period of PERIODS) {
      const n = policy[period];
      if (n === undefined || n === 0) continue;
      const seen = new Set<string>();
      for (const d of decisions) {
        const b = bucket(period, new Date(d.snapshot.time));
        if (seen.has(b)) continue;
        seen.add(b);
        if (seen.size > n) break;
        keep(d, period);
      }
    }
    if (policy.withinMs !== undefined && decisions.length > 0) {
      const newest = Date.parse(decisions[0]!.snapshot.time);
      for (const d of decisions) if (newest - Date.parse(d.snapshot.time) <= policy.withinMs) keep(d, 'within');
    }
    for (const tag of policy.tags ?? []) for (const d of decisions) if (d.snapshot.tags.includes(tag)) keep(d, `tag ${tag}`);
    out.push({ key, decisions });
  }
  return out.sort((a, b) => Date.parse(b.decisions[0]!.snapshot.time) - Date.parse(a.decisions[0]!.snapshot.time));
}

/** "30d", "12h", "2w", "6m" (months of 30 days), "1y" (365 days), or combinations like "1y6m". */
export function parseDuration(text: string): number {
  const units: Record<string, number> = { h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000, m: 30 * 86_400_000, y: 365 * 86_400_000 };
  const parts = [...text.matchAll(/(\d+)([hdwmy])/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text) {
    throw new BulwarkError('usage', `'${text}' is not a duration`, { hint: 'write it like 30d, 12h, 2w, 6m or 1y6m (h hours, d days, w weeks, m months, y years)' });
  }
  return parts.reduce((ms, p) => ms + Number(p[1]) * units[p[2]!]!, 0);
}
