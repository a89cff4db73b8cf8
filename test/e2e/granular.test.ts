// Single files out of disk snapshots, without mounting: a 2 GiB GPT disk holding ext4, XFS, NTFS and
// FAT partitions, each made and filled by its own tools (mke2fs -d, mkfs.xfs -p protofile, mkntfs +
// ntfscp, mkfs.fat + mcopy); backed up with `backup disk`, then browsed (ls), searched (find) and restored file by file.
// Witnesses: the source files themselves (cmp), sfdisk's view of the partitions, and the repository
// blocks fetched (a file restore must read a few MiB, not the disk).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonResult, runCli } from '../helpers/cli.js';
import { makePhysicalVolume, type PhysicalVolume } from '../helpers/lvm.js';
import { tempDir } from '../helpers/repo.js';

const MiB = 1024 * 1024;
let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let snapshot: string;
let src: string;
let dbSnapshot: string;
let lvTree: string;
let pv: PhysicalVolume | undefined;
const VG = `vgdb${process.pid}`;

interface Entry {
  path: string;
  type: string;
  size: number;
  fs?: string;
  mtime?: string;
}

async function ls(path: string, ...extra: string[]): Promise<Entry[]> {
  const r = await runCli(['ls', `${snapshot}:${path}`, '--json', ...extra], { env });
  expect(r.code, r.stderr).toBe(0);
  return jsonResult<{ entries: Entry[] }>(r).entries;
}

beforeAll(async () => {
  tmp = await tempDir('bw-granular-');
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'granular' };
  expect((await runCli(['init'], { env })).code).toBe(0);
  src = `${tmp.path}/src`;
  await mkdir(`${src}/etc/nginx/sites`, { recursive: true });
  await mkdir(`${src}/data/deep/er/and/deeper`, { recursive: true });
  await writeFile(`${src}/etc/nginx/nginx.conf`, 'worker_processes auto;\n');
  await writeFile(`${src}/etc/nginx/sites/default.conf`, 'server { listen 80; }\n');
  await writeFile(`${src}/etc/hostname`, 'web01\n');
  await writeFile(`${src}/data/deep/er/and/deeper/blob.bin`, randomBytes(3 * MiB + 17));
  await writeFile(`${src}/data/Ünïcödé naïve.txt`, 'non-ASCII name\n');
  for (let i = 0; i < 60; i++) await writeFile(`${src}/data/noise-${i}.bin`, randomBytes(2 * MiB));

  const disk = `${tmp.path}/web01.img`;
  execFileSync('truncate', ['-s', '2G', disk]);
  execFileSync('sgdisk', ['-o', '-n', '1:1M:+1G', '-c', '1:root', '-t', '1:8300', '-n', '2:0:+320M', '-c', '2:srv', '-n', '3:0:+64M', '-c', '3:windows', '-t', '3:0700', '-n', '4:0:+64M', '-c', '4:efi', '-t', '4:ef00', disk], { stdio: 'pipe' });
  const parts = (JSON.parse(execFileSync('sfdisk', ['--json', disk]).toString()) as { partitiontable: { partitions: { start: number; size: number }[] } }).partitiontable.partitions;
  const place = (img: string, i: number): void => {
    execFileSync('dd', [`if=${img}`, `of=${disk}`, 'bs=1M', `seek=${(parts[i]!.start * 512) / MiB}`, 'conv=notrunc,sparse', 'status=none']);
  };
  // p1: ext4 of the whole tree.
  const ext4 = `${tmp.path}/p1.img`;
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', src, ext4, `${(parts[0]!.size * 512) / 1024}k`]);
  place(ext4, 0);
  // p2: XFS from a protofile: etc/ only.
  const xfs = `${tmp.path}/p2.img`;
  execFileSync('truncate', ['-s', `${parts[1]!.size * 512}`, xfs]);
  const proto = `${tmp.path}/proto`;
  await writeFile(proto, ['bulwark', '0 0', 'd--755 0 0', ' nginx d--755 0 0', `  nginx.conf ---644 0 0 ${src}/etc/nginx/nginx.conf`, '  $', ` hostname ---644 0 0 ${src}/etc/hostname`, '$', ''].join('\n'));
  execFileSync('mkfs.xfs', ['-q', '-f', '-p', proto, xfs]);
  place(xfs, 1);
  // p3: NTFS with two files copied in by ntfscp.
  const ntfs = `${tmp.path}/p3.img`;
  execFileSync('truncate', ['-s', `${parts[2]!.size * 512}`, ntfs]);
  execFileSync('mkntfs', ['-q', '-F', '-f', '-L', 'WINDATA', ntfs]);
  execFileSync('ntfscp', ['-f', ntfs, `${src}/etc/hostname`, '/hostname.txt']);
  execFileSync('ntfscp', ['-f', ntfs, `${src}/data/deep/er/and/deeper/blob.bin`, '/blob.bin']);
  place(ntfs, 2);
  // p4: FAT16 filled by mtools.
  const fat = `${tmp.path}/p4.img`;
  execFileSync('mkfs.fat', ['-C', '-F', '16', '-n', 'EFI', fat, `${(parts[3]!.size * 512) / 1024}`], { stdio: 'pipe' });
  execFileSync('mcopy', ['-i', fat, '-s', `${src}/etc`, '::/'], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
  place(fat, 3);

  const b = await runCli(['backup', 'disk', disk, '--json'], { env });
  expect(b.code, b.stderr).toBe(0);
  snapshot = jsonResult<{ snapshots: { snapshot: string }[] }>(b).snapshots[0]!.snapshot;

  // db01: an MBR disk, ext4 in primary p1 and, inside an extended partition, logical p5 holding an
  // LVM physical volume whose LV 'data' carries ext4 (made by pvcreate/vgcreate/lvcreate, mke2fs -d).
  const db = `${tmp.path}/db01.img`;
  execFileSync('truncate', ['-s', '256M', db]);
  execFileSync('sfdisk', ['-q', db], { input: 'label: dos\n,32M,L\n,,E\n,,8e\n' });
  const mbr = (JSON.parse(execFileSync('sfdisk', ['--json', db]).toString()) as { partitiontable: { partitions: { node: string; start: number; size: number; type: string }[] } }).partitiontable.partitions;
  expect(mbr.map((p) => p.type)).toEqual(['83', '5', '8e']);
  const p1 = `${tmp.path}/db-p1.img`;
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', `${src}/etc`, p1, `${(mbr[0]!.size * 512) / 1024}k`]);
  execFileSync('dd', [`if=${p1}`, `of=${db}`, 'bs=1M', `seek=${mbr[0]!.start * 512}`, 'oflag=seek_bytes', 'conv=notrunc,sparse', 'status=none']);
  lvTree = `${tmp.path}/lvtree`;
  await mkdir(`${lvTree}/deep/er`, { recursive: true });
  await writeFile(`${lvTree}/deep/er/blob.bin`, await readFile(`${src}/data/deep/er/and/deeper/blob.bin`));
  await writeFile(`${lvTree}/Ünïcödé naïve.txt`, 'inside LVM inside an extended partition\n');
  const pvFile = `${tmp.path}/pv.img`;
  pv = await makePhysicalVolume(pvFile, Math.floor((mbr[2]!.size * 512) / MiB), VG, [
    {
      name: 'data',
      sizeMiB: 96,
      fill: (size) => {
        execFileSync('mkfs.ext4', ['-q', '-F', '-d', lvTree, `${tmp.path}/lv.ext4`, `${size / 1024}k`]);
        return readFile(`${tmp.path}/lv.ext4`);
      },
    },
  ]);
  execFileSync('dd', [`if=${pvFile}`, `of=${db}`, 'bs=1M', `seek=${mbr[2]!.start * 512}`, 'oflag=seek_bytes', 'conv=notrunc,sparse', 'status=none']);
  await pv.release();
  pv = undefined;
  const d = await runCli(['backup', 'disk', db, '--json'], { env });
  expect(d.code, d.stderr).toBe(0);
  dbSnapshot = jsonResult<{ snapshots: { snapshot: string }[] }>(d).snapshots[0]!.snapshot;
}, 600_000);

afterAll(async () => {
  await pv?.release();
  await tmp?.cleanup();
});

describe('files inside disk snapshots', () => {
  it('ls shows the disk, its partitions with their file systems, and the files in each', async () => {
    expect(await ls('/')).toEqual([{ path: '/web01', type: 'disk', size: 2048 * MiB }]);
    const parts = await ls('/web01');
    expect(parts.map((p) => [p.path, p.fs])).toEqual([['/web01/p1', 'ext4'], ['/web01/p2', 'xfs'], ['/web01/p3', 'ntfs'], ['/web01/p4', 'fat16']]);
    const etc = await ls('/web01/p1/etc');
    expect(etc.map((e) => e.path).sort()).toEqual(['/web01/p1/etc/hostname', '/web01/p1/etc/nginx', '/web01/p1/etc/nginx/nginx.conf', '/web01/p1/etc/nginx/sites', '/web01/p1/etc/nginx/sites/default.conf']);
    const conf = etc.find((e) => e.path.endsWith('nginx.conf'))!;
    expect(conf.size).toBe((await stat(`${src}/etc/nginx/nginx.conf`)).size);
    expect(Math.abs(Date.parse(conf.mtime!) - (await stat(`${src}/etc/nginx/nginx.conf`)).mtimeMs)).toBeLessThan(1000);
    expect((await ls('/web01/p2', '--no-recursive')).map((e) => e.path).sort()).toEqual(['/web01/p2/hostname', '/web01/p2/nginx']);
    expect((await ls('/web01/p3')).map((e) => [e.path, e.size])).toEqual(expect.arrayContaining([['/web01/p3/hostname.txt', 6], ['/web01/p3/blob.bin', 3 * MiB + 17]]));
  });

  it('restores single files and folders byte for byte, reading only a few MiB of a 2 GiB disk', async () => {
    const out = `${tmp.path}/out1`;
    const r = await runCli(['restore', `${snapshot}:/web01/p1/data/deep/er/and/deeper/blob.bin`, '--target', out, '--json'], { env });
    expect(r.code, r.stderr).toBe(0);
    const res = jsonResult<{ files: number; bytes: number; blocksFetched: number }>(r);
    expect(res.files).toBe(1);
    execFileSync('cmp', [`${src}/data/deep/er/and/deeper/blob.bin`, `${out}/blob.bin`]);
    console.log(`granular restore: one 3 MiB file from a 2 GiB disk fetched ${res.blocksFetched} blocks of 1 MiB`);
    expect(res.blocksFetched, 'blocks of the disk fetched for one file').toBeLessThanOrEqual(16);

    const dir = `${tmp.path}/out2`;
    const d = await runCli(['restore', `${snapshot}:/web01/p1/etc`, '--target', dir], { env });
    expect(d.code, d.stderr).toBe(0);
    execFileSync('diff', ['-r', `${src}/etc`, `${dir}/etc`]);
    for (const [p, f] of [['/web01/p4/etc/nginx/sites/default.conf', 'etc/nginx/sites/default.conf'], ['/web01/p2/nginx/nginx.conf', 'etc/nginx/nginx.conf'], ['/web01/p3/blob.bin', 'data/deep/er/and/deeper/blob.bin'], ['/web01/p1/data/Ünïcödé naïve.txt', 'data/Ünïcödé naïve.txt']] as const) {
      const o = `${tmp.path}/out-${p.split('/')[2]}-${f.length}`;
      const x = await runCli(['restore', `${snapshot}:${p}`, '--target', o], { env });
      expect(x.code, x.stderr).toBe(0);
      expect((await readFile(`${o}/${p.split('/').pop()}`)).equals(await readFile(`${src}/${f}`))).toBe(true);
    }
    // Never over an existing file.
    const again = await runCli(['restore', `${snapshot}:/web01/p1/etc/hostname`, '--target', `${dir}/etc`], { env });
    expect(again.code).toBe(3);
    expect(again.stdout + again.stderr).toMatch(/already exists; restore never overwrites/);
  });

  it('find searches every file system of the disk', async () => {
    const r = await runCli(['find', snapshot, '*.conf', '--json'], { env });
    expect(r.code, r.stderr).toBe(0);
    const paths = jsonResult<{ matches: { path: string }[] }>(r).matches.map((m) => m.path).sort();
    // FAT keeps short names in capitals: compared without case, as FAT itself does.
    expect(paths.map((p) => p.toLowerCase())).toEqual(['/web01/p1/etc/nginx/nginx.conf', '/web01/p1/etc/nginx/sites/default.conf', '/web01/p2/nginx/nginx.conf', '/web01/p4/etc/nginx/nginx.conf', '/web01/p4/etc/nginx/sites/default.conf']);
    const host = await runCli(['find', snapshot, 'HOSTNAME*', '--json'], { env });
    expect(jsonResult<{ matches: { path: string }[] }>(host).matches.map((m) => m.path.toLowerCase()).sort()).toEqual(['/web01/p1/etc/hostname', '/web01/p2/hostname', '/web01/p3/hostname.txt', '/web01/p4/etc/hostname']);
  });

  it('an MBR disk with an extended partition and LVM inside: ls shows p1 and the LV, files restore byte for byte', async () => {
    const parts = (await runCli(['ls', `${dbSnapshot}:/db01`, '--json'], { env }));
    expect(parts.code, parts.stderr).toBe(0);
    expect(jsonResult<{ entries: Entry[] }>(parts).entries.map((p) => [p.path, p.fs])).toEqual([['/db01/p1', 'ext4'], [`/db01/${VG}-data`, 'ext4']]);
    const inLv = jsonResult<{ entries: Entry[] }>(await runCli(['ls', `${dbSnapshot}:/db01/${VG}-data`, '--json'], { env })).entries;
    expect(inLv.filter((e) => e.type === 'file').map((e) => [e.path, e.size]).sort()).toEqual([
      [`/db01/${VG}-data/deep/er/blob.bin`, 3 * MiB + 17],
      [`/db01/${VG}-data/Ünïcödé naïve.txt`, 40],
    ]);
    for (const [p, f] of [[`/db01/${VG}-data/deep/er/blob.bin`, `${lvTree}/deep/er/blob.bin`], [`/db01/${VG}-data/Ünïcödé naïve.txt`, `${lvTree}/Ünïcödé naïve.txt`], ['/db01/p1/nginx/nginx.conf', `${src}/etc/nginx/nginx.conf`]] as const) {
      const o = `${tmp.path}/db-out-${f.length}`;
      const x = await runCli(['restore', `${dbSnapshot}:${p}`, '--target', o], { env });
      expect(x.code, x.stderr).toBe(0);
      const name = p.split('/').pop()!;
      expect((await readFile(`${o}/${name}`)).equals(await readFile(f))).toBe(true);
      expect(Math.abs((await stat(`${o}/${name}`)).mtimeMs - (await stat(f)).mtimeMs)).toBeLessThan(1000);
    }
  });

  it('a path that is not there, and a disk that is not there, are clear errors', async () => {
    const missing = await runCli(['ls', `${snapshot}:/web01/p1/nope`], { env });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/nope/);
    const nodisk = await runCli(['ls', `${snapshot}:/vdz/p1`], { env });
    expect(nodisk.code).toBe(1);
    expect(nodisk.stderr).toMatch(/has no disk 'vdz'/);
  });
});
