// Exclude patterns, as administrators know them from rsync/restic:
//   *  any run of characters except "/"     **  any run, across directories
//   ?  one character except "/"             **/ zero or more whole directories
//   [abc] [!abc] [a-z]  a character class (never "/"); an unclosed "[" is a literal "["
// A pattern without "/" matches an entry's base name at any depth; a pattern with "/" is anchored at
// the root when it starts with "/", otherwise it may match any trailing part of the path.
//
// Patterns come from users and are matched against every entry of a backup, so they are not turned
// into a RegExp: a backtracking engine takes exponential time on patterns like *a*a*a*a*c. Instead the
// pattern is simulated as an NFA over its token positions, O(path length × pattern length).

import { BulwarkError } from './errors.js';

export type Matcher = (path: string) => boolean;

type Token =
  | { kind: 'char'; ch: string }
  | { kind: 'one' }
  | { kind: 'class'; negate: boolean; ranges: Array<[number, number]> }
  | { kind: 'star' }
  | { kind: 'globstar' }
  | { kind: 'dirs' };

function invalid(pattern: string, reason: string, hint: string): BulwarkError {
  return new BulwarkError('usage', `invalid pattern '${pattern}': ${reason}`, { hint });
}

function parseClass(body: string[], pattern: string): Token {
  const negate = body[0] === '!' || body[0] === '^';
  const items = negate ? body.slice(1) : body;
  if (items.length === 0) {
    throw invalid(pattern, 'the character class is empty', "to match ']' write it outside brackets; '[[]' matches '['");
  }
  const ranges: Array<[number, number]> = [];
  for (let j = 0; j < items.length; j++) {
    const lo = items[j]!;
    const isRange = items[j + 1] === '-' && j + 2 < items.length;
    const hi = isRange ? items[j + 2]! : lo;
    if (isRange) j += 2;
    if (lo === '/' || hi === '/') {
      throw invalid(pattern, "a character class cannot match '/'", "write '/' outside brackets");
    }
    if (lo.codePointAt(0)! > hi.codePointAt(0)!) {
      throw invalid(pattern, `the range ${lo}-${hi} is reversed`, `write the range from low to high, as in [${hi}-${lo}]`);
    }
    ranges.push([lo.codePointAt(0)!, hi.codePointAt(0)!]);
  }
  return { kind: 'class', negate, ranges };
}

function tokenize(p: string, pattern: string): Token[] {
  const cs = Array.from(p); // code points, so "?" and classes take a whole character
  const tokens: Token[] = [];
  for (let i = 0; i < cs.length; i++) {
    const c = cs[i]!;
    if (c === '*') {
      if (cs[i + 1] !== '*') tokens.push({ kind: 'star' });
      else if (cs[i + 2] === '/') {
        // "**/" is "(**/)?": a skip over the two tokens that follow, or through them
        tokens.push({ kind: 'dirs' }, { kind: 'globstar' }, { kind: 'char', ch: '/' });
        i += 2;
      } else {
        tokens.push({ kind: 'globstar' });
        i++;
      }
    } else if (c === '?') tokens.push({ kind: 'one' });
    else if (c === '[' && cs.indexOf(']', i + 1) > 0) {
      const end = cs.indexOf(']', i + 1);
      tokens.push(parseClass(cs.slice(i + 1, end), pattern));
      i = end;
    } else tokens.push({ kind: 'char', ch: c });
  }
  return tokens;
}

/** Adds the positions reachable without consuming a character (all such moves go forward). */
function close(tokens: Token[], states: Uint8Array): void {
  for (let i = 0; i < tokens.length; i++) {
    const k = tokens[i]!.kind;
    if (states[i] && (k === 'star' || k === 'globstar' || k === 'dirs')) states[i + 1] = 1;
    if (states[i] && k === 'dirs') states[i + 3] = 1;
  }
}

function inClass(t: { negate: boolean; ranges: Array<[number, number]> }, ch: string): boolean {
  const cp = ch.codePointAt(0)!;
  return t.ranges.some(([lo, hi]) => cp >= lo && cp <= hi) !== t.negate;
}

/** Runs the NFA over `subject`; with `unanchored`, a match may also start right after any "/". */
function run(tokens: Token[], subject: string, unanchored: boolean): boolean {
  const n = tokens.length;
  let cur = new Uint8Array(n + 1);
  let next = new Uint8Array(n + 1);
  cur[0] = 1;
  close(tokens, cur);
  for (const ch of subject) {
    next.fill(0);
    for (let i = 0; i < n; i++) {
      if (!cur[i]) continue;
      const t = tokens[i]!;
      switch (t.kind) {
        case 'char':
          if (ch === t.ch) next[i + 1] = 1;
          break;
        case 'one':
          if (ch !== '/') next[i + 1] = 1;
          break;
        case 'class':
          if (ch !== '/' && inClass(t, ch)) next[i + 1] = 1;
          break;
        case 'star':
          if (ch !== '/') next[i] = 1;
          break;
        case 'globstar':
          next[i] = 1;
          break;
      }
    }
    if (unanchored && ch === '/') next[0] = 1;
    close(tokens, next);
    [cur, next] = [next, cur];
    if (!unanchored && !cur.includes(1)) return false;
  }
  return cur[n] === 1;
}

export function compileGlob(pattern: string): Matcher {
  const p = pattern.endsWith('/') && pattern.length > 1 ? pattern.slice(0, -1) : pattern;
  const tokens = tokenize(p, pattern);
  if (!p.includes('/')) return (path) => run(tokens, path.slice(path.lastIndexOf('/') + 1), false);
  const unanchored = !p.startsWith('/');
  return (path) => run(tokens, path, unanchored);
}

export function compileGlobs(patterns: readonly string[]): Matcher {
  const ms = patterns.filter((p) => p.trim() !== '' && !p.trimStart().startsWith('#')).map((p) => compileGlob(p.trim()));
  return (path) => ms.some((m) => m(path));
}
