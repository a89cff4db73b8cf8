// XDR (RFC 4506) as libvirt's RPC uses it: big-endian 4-byte units, strings and opaques padded to
// 4 bytes, optional values as a boolean then the value. The reader bounds every length by what is
// left of the message, so a hostile or broken peer cannot make it allocate more than it sent.
import { BulwarkError } from '../../util/errors.js';

export class XdrWriter {
  private chunks: Buffer[] = [];
  private length = 0;

  private push(b: Buffer): this {
    this.chunks.push(b);
    this.length += b.length;
    return this;
  }

  int(v: number): this {
    const b = Buffer.alloc(4);
    b.writeInt32BE(v);
    return this.push(b);
  }

  uint(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v >>> 0);
    return this.push(b);
  }

  hyper(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigInt64BE(v);
    return this.push(b);
  }

  bool(v: boolean): this {
    return this.int(v ? 1 : 0);
  }

  /** Fixed-length opaque (e.g. a UUID): no length word. */
  fixed(b: Buffer): this {
    this.push(b);
    return this.pad(b.length);
  }

  opaque(b: Buffer): this {
    this.uint(b.length);
    return this.fixed(b);
  }

  string(s: string): this {
    return this.opaque(Buffer.from(s, 'utf8'));
  }

  /** libvirt's remote_string: a string that may be NULL. */
  optString(s: string | undefined): this {
    this.bool(s !== undefined);
    return s === undefined ? this : this.string(s);
  }

  array<T>(items: readonly T[], each: (w: XdrWriter, item: T) => void): this {
    this.uint(items.length);
    for (const it of items) each(this, it);
    return this;
  }

  private pad(n: number): this {
    const p = (4 - (n % 4)) % 4;
    return p ? this.push(Buffer.alloc(p)) : this;
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.chunks, this.length);
  }
}

export class XdrReader {
  private at = 0;

  constructor(private readonly buf: Buffer) {}

  get remaining(): number {
    return this.buf.length - this.at;
  }

  private need(n: number, what: string): void {
    if (n > this.remaining) throw new BulwarkError('protocol', `libvirt message too short: ${what} needs ${n} bytes, ${this.remaining} left`);
  }

  int(): number {
    this.need(4, 'int');
    const v = this.buf.readInt32BE(this.at);
    this.at += 4;
    return v;
  }

  uint(): number {
    this.need(4, 'unsigned int');
    const v = this.buf.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }

  hyper(): bigint {
    this.need(8, 'hyper');
    const v = this.buf.readBigInt64BE(this.at);
    this.at += 8;
    return v;
  }

  uhyper(): bigint {
    this.need(8, 'unsigned hyper');
    const v = this.buf.readBigUInt64BE(this.at);
    this.at += 8;
    return v;
  }

  bool(): boolean {
    return this.int() !== 0;
  }

  fixed(n: number): Buffer {
    const padded = n + ((4 - (n % 4)) % 4);
    this.need(padded, 'opaque');
    const b = this.buf.subarray(this.at, this.at + n);
    this.at += padded;
    return Buffer.from(b);
  }

  opaque(max = this.remaining): Buffer {
    const n = this.uint();
    if (n > max) throw new BulwarkError('protocol', `libvirt message holds an opaque of ${n} bytes, more than the ${max} allowed`);
    return this.fixed(n);
  }

  string(): string {
    return this.opaque().toString('utf8');
  }

  optString(): string | undefined {
    return this.bool() ? this.string() : undefined;
  }

  optional<T>(read: (r: XdrReader) => T): T | undefined {
    return this.bool() ? read(this) : undefined;
  }

  array<T>(read: (r: XdrReader) => T, max = 1 << 20): T[] {
    const n = this.uint();
    // Each element takes at least 4 bytes: a count beyond that is a lie, whatever `max` allows.
    if (n > max || n * 4 > this.remaining) throw new BulwarkError('protocol', `libvirt message holds an array of ${n} items, more than it can carry`);
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(read(this));
    return out;
  }
}
