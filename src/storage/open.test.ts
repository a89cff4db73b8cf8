import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BulwarkError } from '../util/errors.js';
import { LimitedBackend } from './limited.js';
import { LocalBackend } from './local.js';
import { RetryBackend } from './retry.js';
import { netTimeoutMs, openBackend } from './open.js';

describe('openBackend', () => {
  it('opens plain paths, absolute or relative, as local folders', () => {
    for (const [loc, want] of [
      ['/srv/backup/repo', '/srv/backup/repo'],
      ['repo', resolve('repo')],
      ['./a/../b', resolve('b')],
      ['./odd:name', resolve('odd:name')],
      ['/mnt/usb/x:y', '/mnt/usb/x:y'],
      ['C:\\repo', resolve('C:\\repo')],
    ]) {
      const b = openBackend(loc!);
      expect(b, loc).toBeInstanceOf(LocalBackend);
      expect(b.properties.location, loc).toBe(want);
    }
  });

  it('opens local: locations', () => {
    expect(openBackend('local:/srv/repo').properties.location).toBe('/srv/repo');
    expect(openBackend('local:rel/repo').properties.location).toBe(resolve('rel/repo'));
    expect(openBackend('LOCAL:/srv/repo').properties.location).toBe('/srv/repo');
  });

  it('opens sftp:, ftp(s):// and s3: locations behind the retry policy, and a bandwidth cap over any', () => {
    for (const [loc, where] of [
      ['sftp:user@host:/srv/repo', 'sftp://user@host:22//srv/repo'],
      ['ftp://user@host/repo', 'ftp://user@host'],
      ['ftps://user@host:2121/repo', 'ftps://user@host:2121'],
      ['s3:https://s3.example.com/bucket/prefix', 's3.example.com'],
      ['rest:https://alice@backup.example.com:8000/web01', 'backup.example.com'],
    ] as const) {
      const b = openBackend(loc, { env: {} });
      expect(b, loc).toBeInstanceOf(RetryBackend);
      expect(b.properties.location, loc).toContain(where);
    }
    expect(openBackend('/srv/repo', { limits: { upload: 1e6 } })).toBeInstanceOf(LimitedBackend);
    expect(openBackend('/srv/repo', { limits: {} })).toBeInstanceOf(LocalBackend);
  });

  it('says which remote backends are not available yet', () => {
    for (const loc of ['https://host/repo', 'b2:bucket/repo']) {
      let err: unknown;
      try {
        openBackend(loc);
      } catch (e) {
        err = e;
      }
      expect(err, loc).toBeInstanceOf(BulwarkError);
      expect(err, loc).toMatchObject({ code: 'usage', message: expect.stringMatching(/not available yet/) });
      expect((err as BulwarkError).hint).toBeTruthy();
    }
  });

  it('refuses unknown schemes, empty locations, and never echoes credentials', () => {
    expect(() => openBackend('sfpt:host:/x')).toThrow(/unknown repository location scheme 'sfpt:'/);
    expect(() => openBackend('')).toThrow(/empty/);
    expect(() => openBackend('local:')).toThrow(/no path/);
    let message = '';
    try {
      openBackend('rest:https://alice:s3cret@host/repo');
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/rest/);
    expect(message).not.toContain('s3cret');
  });

  it('reads BULWARK_NET_TIMEOUT as seconds, and refuses a value that is not a sane number of them', () => {
    expect(netTimeoutMs({})).toBeUndefined();
    expect(netTimeoutMs({ BULWARK_NET_TIMEOUT: '' })).toBeUndefined();
    expect(netTimeoutMs({ BULWARK_NET_TIMEOUT: '5' })).toBe(5000);
    expect(netTimeoutMs({ BULWARK_NET_TIMEOUT: ' 1.5 ' })).toBe(1500);
    for (const bad of ['0', '-3', '10s', 'abc', '1e3', '100000']) {
      expect(() => netTimeoutMs({ BULWARK_NET_TIMEOUT: bad }), bad).toThrow(/BULWARK_NET_TIMEOUT/);
    }
    for (const loc of ['sftp:user@host:/srv/repo', 'ftp://user@host/repo', 's3:https://s3.example.com/bucket', 'rest:https://alice@host/repo']) {
      expect(() => openBackend(loc, { env: { BULWARK_NET_TIMEOUT: 'soon' } }), loc).toThrow(/BULWARK_NET_TIMEOUT 'soon'/);
      expect(openBackend(loc, { env: { BULWARK_NET_TIMEOUT: '7' } }), loc).toBeInstanceOf(RetryBackend);
    }
    expect(openBackend('local:/srv/repo', { env: { BULWARK_NET_TIMEOUT: 'soon' } })).toBeInstanceOf(LocalBackend);
  });
});
