import { describe, expect, it } from 'vitest';
import { compileGlob, compileGlobs } from './glob.js';

describe('compileGlob', () => {
  it('matches base names at any depth when the pattern has no slash', () => {
    const m = compileGlob('*.log');
    expect(m('/var/log/syslog.log')).toBe(true);
    expect(m('/a.log/b')).toBe(false);
    expect(m('/var/log/syslog')).toBe(false);
  });
  it('anchors patterns starting with a slash', () => {
    const m = compileGlob('/srv/cache');
    expect(m('/srv/cache')).toBe(true);
    expect(m('/x/srv/cache')).toBe(false);
  });
  it('lets ** cross directories and * stay within one', () => {
    expect(compileGlob('/home/**/tmp')('/home/a/b/tmp')).toBe(true);
    expect(compileGlob('/home/**/tmp')('/home/tmp')).toBe(true);
    expect(compileGlob('/home/*/tmp')('/home/a/b/tmp')).toBe(false);
  });
  it('supports ? and character classes, and escapes regex characters', () => {
    expect(compileGlob('file?.[ch]')('/x/file1.c')).toBe(true);
    expect(compileGlob('file?.[ch]')('/x/file1.o')).toBe(false);
    expect(compileGlob('a+b(c)')('/a+b(c)')).toBe(true);
    expect(compileGlob('[!a]x')('/bx')).toBe(true);
    expect(compileGlob('[!a]x')('/ax')).toBe(false);
  });
  it('ignores comments and blank lines in lists', () => {
    const m = compileGlobs(['# comment', '', 'node_modules']);
    expect(m('/p/node_modules')).toBe(true);
    expect(m('/p/# comment')).toBe(false);
  });
});
