// Exclude patterns, as administrators know them from rsync/restic:
//   *  any run of characters except "/"     **  any run, across directories
//   ?  one character except "/"             [abc] a character class
// A pattern without "/" matches an entry's base name at any depth; a pattern with "/" is anchored at
// the root when it starts with "/", otherwise it may match any trailing part of the path.

export type Matcher = (path: string) => boolean;

function toRegexBody(pattern: string): string {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') {
      if (pattern[i + 1] === '*') {
        i++;
        if (pattern[i + 1] === '/') {
          i++;
          re += '(?:.*/)?';
        } else re += '.*';
      } else re += '[^/]*';
    } else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 1);
      if (end < 0) re += '\\[';
      else {
        let cls = pattern.slice(i + 1, end).replace(/\\/g, '\\\\');
        if (cls.startsWith('!')) cls = '^' + cls.slice(1);
        re += `[${cls}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return re;
}

export function compileGlob(pattern: string): Matcher {
  const p = pattern.endsWith('/') && pattern.length > 1 ? pattern.slice(0, -1) : pattern;
  if (!p.includes('/')) {
    const re = new RegExp(`^${toRegexBody(p)}$`);
    return (path) => re.test(path.slice(path.lastIndexOf('/') + 1));
  }
  const re = p.startsWith('/') ? new RegExp(`^${toRegexBody(p)}$`) : new RegExp(`(?:^|/)${toRegexBody(p)}$`);
  return (path) => re.test(path);
}

export function compileGlobs(patterns: readonly string[]): Matcher {
  const ms = patterns.filter((p) => p.trim() !== '' && !p.trimStart().startsWith('#')).map((p) => compileGlob(p.trim()));
  return (path) => ms.some((m) => m(path));
}
