// Pins the on-disk format: the vectors of docs/repository-format.md §13, header sizes, and a reference
// repository written by format version 1 that every later version must still read.
import { createHash } from 'node:crypto';
import { cp, readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers/repo.js';
import { LocalBackend } from '../storage/local.js';
import { checkRepository } from './check.js';
import { gearTable } from './chunker.js';
import { blobId, deriveKey, unseal } from './crypto.js';
import { decodePage, encodePage } from './fixed-index.js';
import { FIXED_INDEX_HEADER_BYTES, PACK_ENTRY_BYTES, REPOSITORY_VERSION, SEAL_OVERHEAD, V2_PACK_HEADER_MIN_BYTES, V2_SEAL_OVERHEAD } from './format.js';
import { v2HeaderBytes } from './pack.js';
import { padme, v2AssociatedData, v2SealKey } from './sealer.js';
import { Xaes } from './xaes.js';
import { Repository } from './repository.js';
import { listSnapshots } from './snapshot.js';
import { decodeTree, nodeName } from './tree.js';
import { loadTree, lookupPath } from './walk.js';

describe('format constants and test vectors (docs §13)', () => {
  it('has the documented sizes', () => {
    expect(REPOSITORY_VERSION).toBe(2);
    expect(SEAL_OVERHEAD).toBe(28);
    expect(V2_SEAL_OVERHEAD).toBe(40);
    expect(PACK_ENTRY_BYTES).toBe(41);
    expect(FIXED_INDEX_HEADER_BYTES).toBe(12);
    expect(V2_PACK_HEADER_MIN_BYTES).toBe(2048);
  });

  it('format 2: sealing key = HKDF-SHA256(encrypt key, no salt, "bulwark2 xaes-256-gcm")', () => {
    expect(v2SealKey({ encrypt: Buffer.alloc(32, 0x22) }).toString('hex')).toBe('450dc21bf2bdc8bc56fe06ed2445899ec73477f6aa0f5c86b6df4a4b576a388a');
  });

  it('format 2: seal = XAES-256-GCM with associated data "bulwark2" 0 label 0 ‖ binding', () => {
    const ad = v2AssociatedData('data', Buffer.alloc(32, 0x11));
    expect(ad.toString('hex')).toBe('62756c7761726b3200' + '6461746100' + '11'.repeat(32));
    const key = v2SealKey({ encrypt: Buffer.alloc(32, 0x22) });
    const sealed = Buffer.from('33'.repeat(24) + 'bd21aa99e66c22081c0af4d1aa537a38370746267522d1', 'hex');
    expect(new Xaes(key).open(sealed, ad).toString()).toBe('bulwark');
    // The same bytes are no tree blob, no other data blob, and no document.
    expect(() => new Xaes(key).open(sealed, v2AssociatedData('tree', Buffer.alloc(32, 0x11)))).toThrow(/authenticate/);
    expect(() => new Xaes(key).open(sealed, v2AssociatedData('data', Buffer.alloc(32, 0x12)))).toThrow(/authenticate/);
    expect(() => new Xaes(key).open(sealed, v2AssociatedData('snapshots'))).toThrow(/authenticate/);
  });

  it('format 2: Padmé lengths of packs and headers', () => {
    expect([1000, 5204, 16 * 1024 * 1024 + 1].map(padme)).toEqual([1024, 5376, 17301504]);
    expect([0, 1, 49, 50, 1000].map(v2HeaderBytes)).toEqual([2048, 2048, 2048, 2176, 43008]);
  });

  it('blob id = keyed BLAKE3(id key, plaintext)', () => {
    expect(blobId({ id: Buffer.alloc(32, 0x11) }, Buffer.from('bulwark')).toString('hex')).toBe('da71df984eda2a1d451ac9d4e4229d7f34a16acae37a54f9d6ec2c6390026337');
    // BLAKE3's published keyed_hash vector for empty input: proves the mode, not just our own output.
    expect(blobId({ id: Buffer.from('whats the Elvish word for friend') }, Buffer.alloc(0)).toString('hex')).toBe('92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26');
  });

  it('seal = nonce ‖ AES-256-GCM ciphertext ‖ tag', () => {
    const sealed = Buffer.from('33333333333333333333333314b6aa9d145e1d29b6b52e62ee94bbd39700903b6e717c', 'hex');
    expect(unseal(Buffer.alloc(32, 0x22), sealed, 'vector').toString()).toBe('bulwark');
  });

  it('key derivation is scrypt(NFC password, salt, N, r, p) → 32 bytes', async () => {
    const k = await deriveKey('password', Buffer.alloc(32, 0x44), { N: 1024, r: 8, p: 1 });
    expect(k.toString('hex')).toBe('f273e49ee0aee64e5149057428cb41926bb2c1791254aa2f2643a6d427040242');
  });

  it('gear table: counter-mode SHA-256 of the seed', () => {
    const g = gearTable(Buffer.alloc(32, 0x42));
    expect([...g.subarray(0, 4)]).toEqual([0xf497f960, 0xd8e22280, 0x94d3a414, 0xed2380e5]);
    expect(g[255]).toBe(0xaa47f9c7);
  });

  it('fixed index page layout', () => {
    const page = encodePage([null, '01'.repeat(32)]);
    expect(page.toString('hex')).toBe('42574649' + '01000000' + '02000000' + '00'.repeat(32) + '01'.repeat(32));
    expect(decodePage(page, 'v')).toEqual([null, '01'.repeat(32)]);
  });
});

describe('reference repository written by format version 1', () => {
  let tmp: { path: string; cleanup(): Promise<void> };
  let repo: Repository;
  beforeAll(async () => {
    tmp = await tempDir();
    // A copy: opening writes nothing, but check and tests must never touch the fixture itself.
    await cp(new URL('../../test/fixtures/repo-v1', import.meta.url), `${tmp.path}/repo`, { recursive: true });
    repo = await Repository.open(new LocalBackend(`${tmp.path}/repo`), 'bulwark-format-v1');
    await repo.loadIndex();
  });
  afterAll(async () => {
    await repo.close();
    await tmp.cleanup();
  });

  it('opens, and check --read-data finds no problem', async () => {
    expect(repo.config.version).toBe(1);
    const r = await checkRepository(repo, { readData: true });
    expect(r.problems).toEqual([]);
    expect(r.snapshots).toBe(2);
  });

  it('reads the file snapshot back exactly', async () => {
    const [files] = await listSnapshots(repo, { source: 'files' });
    const sha = async (path: string): Promise<string> => {
      const found = await lookupPath(repo, files!.tree!, path);
      const parts = await Promise.all((found!.node!.content ?? []).map((id) => repo.loadBlob('data', id)));
      return createHash('sha256').update(Buffer.concat(parts)).digest('hex');
    };
    expect(await sha('/tmp/bulwark-fixture-v1/etc/app/app.conf')).toBe('0083dacc561dfd01081d8554269e201f4b60fe597ab9892977bfde81da46ef60');
    expect(await sha('/tmp/bulwark-fixture-v1/etc/app/repeated.txt')).toBe('29927e273accc68286005017f7fa6e4f27bddb4db3083ff8b8d4c3667905b7fa');
    const top = await loadTree(repo, (await lookupPath(repo, files!.tree!, '/tmp/bulwark-fixture-v1'))!.tree!);
    const link = top.nodes.find((n) => nodeName(n).toString() === 'config-link')!;
    expect(link.type).toBe('symlink');
    expect(link.linkTarget).toBe('etc/app/app.conf');
    expect(files!.tags).toEqual(['fixture']);
    // Trees decode with the documented shape.
    expect(decodeTree(await repo.loadBlob('tree', files!.tree!), files!.tree!).nodes[0]!.type).toBe('dir');
  });

  it('reads the disk snapshot back exactly, with the zero MiB as a hole', async () => {
    const [disk] = await listSnapshots(repo, { source: 'disk:disk' });
    const d = disk!.disks![0]!;
    expect(d.size).toBe(2.5 * 1024 * 1024);
    const ids = decodePage(await repo.loadBlob('tree', d.pages[0]!), d.pages[0]!);
    expect(ids[1]).toBeNull();
    const blocks = await Promise.all(ids.map((id) => (id ? repo.loadBlob('data', id) : Buffer.alloc(d.blockSize))));
    const image = Buffer.concat(blocks).subarray(0, d.size);
    expect(createHash('sha256').update(image).digest('hex')).toBe('695f2e2d38144e7cf6d8e934970cb457d08f8117452dce7ba00f006d24adba78');
  });

  it('keeps its key file in the documented JSON shape', async () => {
    const keys: string[] = [];
    for await (const f of repo.backend.list('keys')) keys.push(f.name);
    const k = JSON.parse(await readFile(new URL(`../../test/fixtures/repo-v1/keys/${keys[0]}`, import.meta.url), 'utf8')) as Record<string, unknown>;
    expect(Object.keys(k).sort()).toEqual(['N', 'created', 'data', 'hostname', 'kdf', 'p', 'r', 'salt', 'username', 'version']);
    expect(k['kdf']).toBe('scrypt');
  });
});
