import { describe, expect, it } from 'vitest';
import { BulwarkError } from './errors.js';
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
  it('matches a pattern that makes a backtracking engine explode, in polynomial time', () => {
    const m = compileGlob('*a*a*a*a*a*a*a*a*a*a*c');
    const started = Date.now();
    expect(m('/home/u/' + 'a'.repeat(40))).toBe(false);
    expect(m('/home/u/' + 'a'.repeat(40) + 'c')).toBe(true);
    expect(compileGlob('/**a**a**a**a**a**a**a**a**c')('/' + 'a/'.repeat(30))).toBe(false);
    expect(Date.now() - started).toBeLessThan(2000);
  });
  it('supports negated classes, ranges, and a literal "]" outside a class', () => {
    expect(compileGlob('[!a-c]x')('/dx')).toBe(true);
    expect(compileGlob('[!a-c]x')('/bx')).toBe(false);
    expect(compileGlob('[^a]x')('/ax')).toBe(false);
    expect(compileGlob('v[0-9][0-9]')('/v42')).toBe(true);
    expect(compileGlob('v[0-9][0-9]')('/v4x')).toBe(false);
    expect(compileGlob('[a-]')('/-')).toBe(true);
    expect(compileGlob('[a-a]')('/-')).toBe(false);
    expect(compileGlob('[a]]')('/a]')).toBe(true);
    expect(compileGlob('a]')('/a]')).toBe(true);
    expect(compileGlob('[[]x')('/[x')).toBe(true);
    expect(compileGlob('[ab')('/[ab')).toBe(true);
    expect(compileGlob('[ab')('/a')).toBe(false);
  });
  it('never lets ?, * or a negated class match "/"', () => {
    expect(compileGlob('/a?b')('/a/b')).toBe(false);
    expect(compileGlob('/a[!x]b')('/a/b')).toBe(false);
    expect(compileGlob('/a*b')('/a/b')).toBe(false);
    expect(compileGlob('/a**b')('/a/b')).toBe(true);
  });
  it('lets **/ stand for zero or more whole directories', () => {
    const m = compileGlob('/src/**/*.ts');
    expect(m('/src/a.ts')).toBe(true);
    expect(m('/src/x/y/a.ts')).toBe(true);
    expect(m('/srcx/a.ts')).toBe(false);
    expect(m('/src/x/a.tsx')).toBe(false);
    expect(compileGlob('/a/**/b')('/a/xb')).toBe(false);
  });
  it('matches an unanchored pattern with a slash on whole trailing components only', () => {
    const m = compileGlob('cache/*.tmp');
    expect(m('/var/cache/x.tmp')).toBe(true);
    expect(m('/cache/x.tmp')).toBe(true);
    expect(m('/var/mycache/x.tmp')).toBe(false);
    expect(m('/var/cache/x.tmp/y')).toBe(false);
    expect(compileGlob('/var/cache/')('/var/cache')).toBe(true);
    expect(compileGlob('/var/cache')('/x/var/cache')).toBe(false);
  });
  it('rejects a reversed range with a usage error', () => {
    const err = (() => {
      try {
        compileGlob('[z-a]');
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(BulwarkError);
    expect(err).toMatchObject({ code: 'usage', message: "invalid pattern '[z-a]': the range z-a is reversed" });
    expect((err as BulwarkError).hint).toBeTruthy();
    expect(() => compileGlobs(['*.log', '[]'])).toThrow(BulwarkError);
  });
  it('ignores comments and blank lines in lists', () => {
    const m = compileGlobs(['# comment', '', 'node_modules']);
    expect(m('/p/node_modules')).toBe(true);
    expect(m('/p/# comment')).toBe(false);
  });
});
