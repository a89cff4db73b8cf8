// Restore points as a drive: `serve-files --webdav` read by real clients (rclone's WebDAV backend and
// curl), over plain HTTP and over HTTPS, compared with what `restore` gives for the same snapshot; the
// disk of a disk snapshot read at random offsets against the original image; a wrong login refused.
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonResult, runCli, startCli, type RunningCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';

const MiB = 1024 * 1024;
const PASSWORD = 'drive-login-secret';
let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let src: string;
let disk: string;
let fileSnap: string;
let diskSnap: string;
let server: RunningCli<{ webdav: string; ftp: string; user: string }> | undefined;
/** WebDAV and FTP with --tls-cert/--tls-key: HTTPS and FTPS from the same certificate. */
let secure: RunningCli<{ webdav: string; ftp: string; user: string }> | undefined;
let cert: string;

function stamp(s: { id: string; time: string }): string {
  return `${s.time.slice(0, 19).replace('T', '_').replace(/:/g, '-')}_${s.id.slice(0, 8)}`;
}

function curl(url: string, ...extra: string[]): Buffer {
  return execFileSync('curl', ['-sS', '--fail', '-u', `restore:${PASSWORD}`, ...extra, url], { maxBuffer: 512 * MiB });
}

beforeAll(async () => {
  tmp = await tempDir('bw-drive-');
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'drive', BULWARK_SERVE_PASSWORD: PASSWORD };
  expect((await runCli(['init'], { env })).code).toBe(0);
  src = `${tmp.path}/src`;
  await mkdir(`${src}/etc/nginx`, { recursive: true });
  await mkdir(`${src}/data/déjà vu`, { recursive: true });
  await writeFile(`${src}/etc/nginx/nginx.conf`, 'worker_processes auto;\n');
  await writeFile(`${src}/data/déjà vu/naïve.txt`, 'non-ASCII\n');
  await writeFile(`${src}/data/big.bin`, randomBytes(20 * MiB + 123));
  for (let i = 0; i < 50; i++) await writeFile(`${src}/data/small-${i}.txt`, `file ${i}\n`.repeat(i + 1));
  const b = await runCli(['backup', 'files', src, '--json'], { env });
  expect(b.code, b.stderr).toBe(0);
  fileSnap = jsonResult<{ snapshot: string }>(b).snapshot;
  // A disk: ext4 made by mke2fs -d from the same tree.
  disk = `${tmp.path}/web01.img`;
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', `${src}/etc`, disk, '64M']);
  const d = await runCli(['backup', 'disk', disk, '--json'], { env });
  expect(d.code, d.stderr).toBe(0);
  diskSnap = jsonResult<{ snapshots: { snapshot: string }[] }>(d).snapshots[0]!.snapshot;
  server = await startCli(['serve-files', '--webdav', '127.0.0.1:0', '--ftp', '127.0.0.1:0'], { env });
  cert = `${tmp.path}/cert.pem`;
  const key = `${tmp.path}/key.pem`;
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'pipe' });
  secure = await startCli(['serve-files', '--webdav', '127.0.0.1:0', '--ftp', '127.0.0.1:0', '--tls-cert', cert, '--tls-key', key], { env });
}, 300_000);

afterAll(async () => {
  await server?.stop();
  await secure?.stop();
  await tmp?.cleanup();
});

async function folderOf(id: string): Promise<string> {
  const all = jsonResult<{ id: string; time: string }[]>(await runCli(['snapshots', '--json'], { env }));
  return stamp(all.find((s) => s.id === id)!);
}

describe('restore points over WebDAV', () => {
  it('rclone copies a file snapshot out of the drive; it is what restore gives', async () => {
    const url = server!.ready.webdav;
    const folder = await folderOf(fileSnap);
    const pass = execFileSync('rclone', ['obscure', PASSWORD]).toString().trim();
    const out = `${tmp.path}/rclone`;
    execFileSync('rclone', ['copy', `:webdav:snapshots/${folder}${src}`, out, '--webdav-url', url, '--webdav-user', 'restore', '--webdav-pass', pass, '--config', '/dev/null'], { stdio: 'pipe' });
    const restored = `${tmp.path}/restored`;
    expect((await runCli(['restore', fileSnap, '--target', restored], { env })).code).toBe(0);
    execFileSync('diff', ['-r', out, `${restored}${src}`]);
    const listed = execFileSync('rclone', ['lsf', '-R', `:webdav:snapshots/${folder}${src}/data`, '--webdav-url', url, '--webdav-user', 'restore', '--webdav-pass', pass, '--config', '/dev/null']).toString();
    expect(listed).toContain('déjà vu/naïve.txt');
  });

  it('curl reads ranges of a file and of a disk image, byte for byte; files inside the disk too', async () => {
    const url = server!.ready.webdav;
    const big = await readFile(`${src}/data/big.bin`);
    const fileFolder = encodeURIComponent(await folderOf(fileSnap));
    const at = 7 * MiB + 4095;
    const part = curl(`${url}snapshots/${fileFolder}${src}/data/big.bin`, '-r', `${at}-${at + 3 * MiB}`);
    expect(part.equals(big.subarray(at, at + 3 * MiB + 1))).toBe(true);
    const image = await readFile(disk);
    const diskFolder = encodeURIComponent(await folderOf(diskSnap));
    for (const off of [0, 1024, 5 * MiB + 17, 64 * MiB - 100]) {
      const got = curl(`${url}snapshots/${diskFolder}/web01.raw`, '-r', `${off}-${off + 99}`);
      expect(got.equals(image.subarray(off, off + 100)), `offset ${off}`).toBe(true);
    }
    expect(curl(`${url}snapshots/${diskFolder}/web01/fs/nginx/nginx.conf`).toString()).toBe('worker_processes auto;\n');
  });

  it('refuses a wrong login and every write', async () => {
    const url = server!.ready.webdav;
    const code = (...args: string[]): string => execFileSync('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', ...args]).toString();
    expect(code('-u', 'restore:wrong', `${url}snapshots/`)).toBe('401');
    expect(code(`${url}snapshots/`)).toBe('401');
    expect(code('-u', `restore:${PASSWORD}`, '-X', 'PUT', '--data', 'x', `${url}snapshots/new.txt`)).toBe('405');
    expect(code('-u', `restore:${PASSWORD}`, '-X', 'DELETE', `${url}snapshots/`)).toBe('405');
    expect(code('-u', `restore:${PASSWORD}`, `${url}snapshots/..%2f..%2fetc/passwd`)).toMatch(/^(400|404)$/);
  });

  it('HTTPS with --tls-cert/--tls-key: curl and rclone, trusting that certificate, read what restore gives; a wrong login is refused', async () => {
    const url = secure!.ready.webdav;
    expect(url).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/$/);
    const folder = await folderOf(fileSnap);
    const restored = `${tmp.path}/restored-https`;
    expect((await runCli(['restore', fileSnap, '--target', restored], { env })).code).toBe(0);
    const big = curl(`${url}snapshots/${encodeURIComponent(folder)}${src}/data/big.bin`, '--cacert', cert);
    expect(big.equals(await readFile(`${restored}${src}/data/big.bin`))).toBe(true);
    const pass = execFileSync('rclone', ['obscure', PASSWORD]).toString().trim();
    const out = `${tmp.path}/rclone-https`;
    execFileSync('rclone', ['copy', `:webdav:snapshots/${folder}${src}`, out, '--webdav-url', url, '--webdav-user', 'restore', '--webdav-pass', pass, '--ca-cert', cert, '--config', '/dev/null'], { stdio: 'pipe' });
    execFileSync('diff', ['-r', out, `${restored}${src}`]);
    const code = (...args: string[]): string => execFileSync('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', cert, ...args]).toString();
    expect(code('-u', 'restore:wrong', `${url}snapshots/`)).toBe('401');
    expect(code(`${url}snapshots/`)).toBe('401');
    // Plain HTTP to the HTTPS port gets no answer at all (the connection is dropped: curl says 000), so
    // nothing can fall back to sending the login in the clear.
    const plain = spawnSync('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-u', `restore:${PASSWORD}`, `${url.replace('https://', 'http://')}snapshots/`]);
    expect(plain.status).not.toBe(0);
    expect(plain.stdout.toString()).toBe('000');
  });

  it('warns when plain HTTP listens beyond loopback, and only then', async () => {
    const open = await startCli(['serve-files', '--webdav', '0.0.0.0:0'], { env });
    expect(open.ready).toMatchObject({ webdav: expect.stringMatching(/^http:\/\//) });
    await open.stop();
    expect(open.output().stderr).toMatch(/warning: WebDAV at http:\/\/0\.0\.0\.0:\d+\/ is plain HTTP on a network address: the login's password crosses the network in the clear/);
    expect(server!.output().stderr).not.toContain('in the clear');
    expect(secure!.output().stderr).not.toContain('in the clear');
  });
});

describe('restore points over FTP(S)', () => {
  it('curl lists and fetches over FTP what restore gives, resumes mid-file, and is refused writes and a wrong login', async () => {
    const url = server!.ready.ftp;
    const folder = await folderOf(fileSnap);
    const base = `${url}snapshots/${encodeURIComponent(folder)}${src}`;
    const names = execFileSync('curl', ['-sS', '-u', `restore:${PASSWORD}`, '--list-only', `${base}/data/`]).toString().split(/\r?\n/).filter(Boolean);
    expect(names).toContain('big.bin');
    expect(names).toContain('déjà vu');
    const big = await readFile(`${src}/data/big.bin`);
    expect(curl(`${base}/data/big.bin`).equals(big)).toBe(true);
    // REST: from an offset to the end.
    expect(curl(`${base}/data/big.bin`, '-C', String(5 * MiB + 1)).equals(big.subarray(5 * MiB + 1))).toBe(true);
    expect(curl(`${base}/data/${encodeURIComponent('déjà vu')}/${encodeURIComponent('naïve.txt')}`).toString()).toBe('non-ASCII\n');
    const denied = (...args: string[]): number => {
      try {
        execFileSync('curl', ['-sS', ...args], { stdio: 'pipe' });
        return 0;
      } catch (err) {
        return (err as { status: number }).status;
      }
    };
    // curl's exit codes: 67 login denied, 25 upload refused.
    expect(denied('-u', 'restore:wrong', `${url}snapshots/`)).toBe(67);
    expect(denied('-u', `restore:${PASSWORD}`, '-T', `${src}/etc/nginx/nginx.conf`, `${url}snapshots/x.conf`)).toBe(25);
  });

  it('FTPS: the login and the data go over TLS, and plain logins are refused', async () => {
    const url = secure!.ready.ftp.replace('ftps://', 'ftp://');
    const folder = encodeURIComponent(await folderOf(diskSnap));
    const image = await readFile(disk);
    const got = execFileSync('curl', ['-sS', '--fail', '--ssl-reqd', '-k', '-u', `restore:${PASSWORD}`, `${url}snapshots/${folder}/web01.raw`], { maxBuffer: 128 * MiB });
    expect(got.equals(image)).toBe(true);
    let status = 0;
    try {
      execFileSync('curl', ['-sS', '-u', `restore:${PASSWORD}`, `${url}snapshots/`], { stdio: 'pipe' });
    } catch (err) {
      status = (err as { status: number }).status;
    }
    expect(status).not.toBe(0);
  });
});

describe('restore points as a FUSE mount', () => {
  it('ls, cat and cp through the mount give what restore gives; random reads of a disk image match the original; unmounted on Ctrl-C', async () => {
    const at = `${tmp.path}/mnt`;
    await mkdir(at);
    const m = await startCli<{ mountpoint: string }>(['mount', at], { env });
    try {
      expect(m.ready.mountpoint).toBe(at);
      const folders = execFileSync('ls', [`${at}/snapshots`]).toString().split('\n').filter(Boolean);
      expect(folders).toEqual(expect.arrayContaining([await folderOf(fileSnap), await folderOf(diskSnap)]));
      const files = `${at}/snapshots/${await folderOf(fileSnap)}${src}`;
      const restored = `${tmp.path}/restored-for-mount`;
      expect((await runCli(['restore', fileSnap, '--target', restored], { env })).code).toBe(0);
      const copied = `${tmp.path}/cp-from-mount`;
      execFileSync('cp', ['-r', files, copied]);
      execFileSync('diff', ['-r', copied, `${restored}${src}`]);
      expect(execFileSync('cat', [`${files}/etc/nginx/nginx.conf`]).toString()).toBe('worker_processes auto;\n');
      // The disk image at random offsets, read with dd through the kernel.
      const image = await readFile(disk);
      const raw = `${at}/snapshots/${await folderOf(diskSnap)}/web01.raw`;
      expect(Number(execFileSync('stat', ['-c', '%s', raw]).toString())).toBe(image.length);
      for (const off of [0, 4096 * 3 + 1, 17 * MiB + 333, 64 * MiB - 512]) {
        const got = execFileSync('dd', [`if=${raw}`, 'bs=1', `skip=${off}`, 'count=512', 'status=none']);
        expect(got.equals(image.subarray(off, off + 512)), `offset ${off}`).toBe(true);
      }
      expect(execFileSync('cat', [`${at}/snapshots/${await folderOf(diskSnap)}/web01/fs/nginx/nginx.conf`]).toString()).toBe('worker_processes auto;\n');
      let refused = '';
      try {
        execFileSync('touch', [`${files}/new`], { stdio: 'pipe' });
      } catch (err) {
        refused = String((err as { stderr: Buffer }).stderr);
      }
      expect(refused).toMatch(/Read-only file system/);
    } finally {
      expect(await m.stop('SIGINT')).toBe(0);
    }
    expect(await readFile('/proc/mounts', 'utf8')).not.toContain(` ${at} `);
  });
});

