// Human formatting of sizes, durations and rates for text output, and the parsing of sizes and
// listening addresses given on the command line.
import { BulwarkError } from '../util/errors.js';

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  // Below 1 KiB too (rates are fractions): one decimal place under 10, whole numbers above.
  return i === 0 ? `${Number.isInteger(n) ? n : n.toFixed(n < 10 ? 1 : 0)} B` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}`;
}

export function duration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  const rest = Math.round(s % 60);
  if (m < 60) return `${m}m${String(rest).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

export function rate(bytesDone: number, ms: number): string {
  return ms > 0 ? `${bytes((bytesDone * 1000) / ms)}/s` : '-';
}

export function shortId(id: string): string {
  return id.slice(0, 8);
}

/** A size as people write it: 512, 64K, 10G, 1.5GiB, 20 MB (binary units; B optional). */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) return undefined;
  const exp = ' kmgtp'.indexOf((m[2] || ' ').toLowerCase());
  return Math.round(Number(m[1]) * 1024 ** exp);
}

/** `[HOST:]PORT` of a listening option; the host defaults to loopback: nothing beyond this host unless told. */
export function parseHostPort(spec: string, example: string): { host: string; port: number } {
  const m = /^(?:(\[[^\]]+\]|[^:]+):)?(\d{1,5})$/.exec(spec);
  if (!m || Number(m[2]) > 65535) throw new BulwarkError('usage', `'${spec}' is not [HOST:]PORT`, { hint: `e.g. ${example}` });
  return { host: (m[1] ?? '127.0.0.1').replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}
