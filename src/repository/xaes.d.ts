export declare const XAES_NONCE_BYTES: 24;
export declare const XAES_TAG_BYTES: 16;
export declare const XAES_OVERHEAD: 40;

/** AES-256-GCM into `out` as stored ‖ ciphertext ‖ tag; `plain` may lie in `out`. Returns the part used. */
export declare function gcmSealInto(out: Uint8Array, key: Uint8Array, iv: Uint8Array, stored: Uint8Array, plain: Uint8Array, ad?: Uint8Array | null): Buffer;

/** Opens AES-256-GCM in place (`ct` becomes the plaintext); throws "unable to authenticate" when not genuine. */
export declare function gcmOpenInPlace(key: Uint8Array, iv: Uint8Array, ct: Uint8Array, tag: Uint8Array, ad?: Uint8Array | null): void;

export declare class Xaes {
  constructor(key: Uint8Array);
  deriveKey(nonce: Uint8Array): Buffer;
  seal(plain: Uint8Array, ad?: Uint8Array | null, nonce?: Uint8Array): Buffer;
  /** seal() into `out` (plain.length + XAES_OVERHEAD bytes or more; `plain` may lie in it); returns the part used. */
  sealInto(out: Uint8Array, plain: Uint8Array, ad?: Uint8Array | null, nonce?: Uint8Array): Buffer;
  open(sealed: Uint8Array, ad?: Uint8Array | null): Buffer;
  /** open() in place: the plaintext as a view of `sealed`, whose bytes it overwrites. */
  openInPlace(sealed: Uint8Array, ad?: Uint8Array | null): Buffer;
}
