// The index entries a process adds itself (the blobs of its own packs), held in typed arrays: a backup
// of 1 TB of new data adds about a million, and as a Map of hex ids to objects each cost about 180
// bytes of the JavaScript heap, which V8 then grows to twice what is live. Here one costs about 70
// bytes, outside that heap: the id's 32 bytes, where it is (24), its pack and type (5), and a slot of
// the hash table.
import { randomBytes } from 'node:crypto';
import { BLOB_TYPES_BY_CODE, BLOB_TYPE_CODES } from './format.js';
import type { IndexEntry } from './index-file.js';

const ID_BYTES = 32;
const HEX_ID = /^[0-9a-f]{64}$/;

export class BlobTable {
  private capacity = 0;
  private count = 0;
  /** Per entry: its id, as 8 words (so two ids compare in 8 steps). */
  private ids = new Int32Array(0);
  /** Per entry: offset, length, ulen. */
  private nums = new Float64Array(0);
  /** Per entry: its pack's number in `packNames`. */
  private packOf = new Uint32Array(0);
  private typeOf = new Uint8Array(0);
  /** Open addressing: entry number + 1 per slot, 0 for an empty one; never more than half full. */
  private slots = new Int32Array(0);
  private readonly packNames: string[] = [];
  private readonly packNumbers = new Map<string, number>();
  /** Mixed into the hash: ids that another writer chose cannot be made to pile up in one slot. */
  private readonly seed = randomBytes(4).readInt32LE(0);
  private readonly scratch = new Int32Array(ID_BYTES / 4);
  private readonly scratchBytes = Buffer.from(this.scratch.buffer);
  /** Slots looked at by lookups so far: about one per lookup while the ids spread well. */
  probes = 0;

  get size(): number {
    return this.count;
  }

  /** Bytes of memory the table takes. */
  get memoryBytes(): number {
    return this.ids.byteLength + this.nums.byteLength + this.packOf.byteLength + this.typeOf.byteLength + this.slots.byteLength;
  }

  has(id: string): boolean {
    return this.find(id) >= 0;
  }

  get(id: string): IndexEntry | undefined {
    const n = this.find(id);
    return n < 0 ? undefined : this.entryAt(n);
  }

  /** Adds `id` (64 lowercase hex digits), which must not be in the table yet. */
  add(id: string, e: IndexEntry): void {
    if (!HEX_ID.test(id)) throw new Error(`not a blob id: '${id}'`);
    if (this.find(id) >= 0) throw new Error(`blob ${id} is in the table already`);
    if (this.count >= this.capacity) this.grow();
    const n = this.count++;
    this.ids.set(this.scratch, n * 8);
    this.nums[n * 3] = e.offset;
    this.nums[n * 3 + 1] = e.length;
    this.nums[n * 3 + 2] = e.ulen;
    this.packOf[n] = this.packNumber(e.pack);
    this.typeOf[n] = BLOB_TYPE_CODES[e.type];
    this.place(n);
  }

  clear(): void {
    this.capacity = this.count = 0;
    this.ids = new Int32Array(0);
    this.nums = new Float64Array(0);
    this.packOf = new Uint32Array(0);
    this.typeOf = new Uint8Array(0);
    this.slots = new Int32Array(0);
    this.packNames.length = 0;
    this.packNumbers.clear();
  }

  /** Every entry, in the order added. */
  *entries(): Generator<[string, IndexEntry]> {
    // Read through the current arrays each time: they are replaced when the table grows.
    for (let n = 0; n < this.count; n++) yield [Buffer.from(this.ids.buffer, n * ID_BYTES, ID_BYTES).toString('hex'), this.entryAt(n)];
  }

  private entryAt(n: number): IndexEntry {
    return { pack: this.packNames[this.packOf[n]!]!, type: BLOB_TYPES_BY_CODE[this.typeOf[n]!]!, offset: this.nums[n * 3]!, length: this.nums[n * 3 + 1]!, ulen: this.nums[n * 3 + 2]! };
  }

  private packNumber(pack: string): number {
    let p = this.packNumbers.get(pack);
    if (p === undefined) {
      p = this.packNames.push(pack) - 1;
      this.packNumbers.set(pack, p);
    }
    return p;
  }

  /** The slot an id in `words` (8 words at `at`) starts looking from. */
  private home(words: Int32Array, at: number): number {
    // Ids are keyed hashes, evenly spread already; mixing in a seed keeps ids another writer chose
    // (index files read from a pack's header) from being made to pile up.
    let h = this.seed;
    for (let i = at; i < at + 8; i++) h = Math.imul(h ^ words[i]!, 0x9e3779b1);
    return h ^ (h >>> 16);
  }

  /** The entry number of `id` (decoded into the scratch words), or -1. */
  private find(id: string): number {
    if (id.length !== ID_BYTES * 2 || this.scratchBytes.write(id, 'hex') !== ID_BYTES) {
      this.scratch.fill(0);
      return -1;
    }
    if (this.count === 0) return -1;
    const s = this.scratch;
    const mask = this.slots.length - 1;
    for (let slot = this.home(s, 0) & mask; ; slot = (slot + 1) & mask) {
      this.probes++;
      const v = this.slots[slot]!;
      if (v === 0) return -1;
      const at = (v - 1) * 8;
      const ids = this.ids;
      if (ids[at] === s[0] && ids[at + 1] === s[1] && ids[at + 2] === s[2] && ids[at + 3] === s[3] && ids[at + 4] === s[4] && ids[at + 5] === s[5] && ids[at + 6] === s[6] && ids[at + 7] === s[7]) return v - 1;
    }
  }

  private place(n: number): void {
    const mask = this.slots.length - 1;
    let slot = this.home(this.ids, n * 8) & mask;
    while (this.slots[slot] !== 0) slot = (slot + 1) & mask;
    this.slots[slot] = n + 1;
  }

  private grow(): void {
    const capacity = Math.max(1024, this.capacity * 2);
    const ids = new Int32Array(capacity * 8);
    ids.set(this.ids);
    const nums = new Float64Array(capacity * 3);
    nums.set(this.nums);
    const packOf = new Uint32Array(capacity);
    packOf.set(this.packOf);
    const typeOf = new Uint8Array(capacity);
    typeOf.set(this.typeOf);
    this.ids = ids;
    this.nums = nums;
    this.packOf = packOf;
    this.typeOf = typeOf;
    this.capacity = capacity;
    this.slots = new Int32Array(capacity * 2);
    for (let n = 0; n < this.count; n++) this.place(n);
  }
}
