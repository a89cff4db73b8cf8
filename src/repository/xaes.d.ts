export declare const XAES_NONCE_BYTES: 24;
export declare const XAES_TAG_BYTES: 16;
export declare const XAES_OVERHEAD: 40;

export declare class Xaes {
  constructor(key: Uint8Array);
  deriveKey(nonce: Uint8Array): Buffer;
  seal(plain: Uint8Array, ad?: Uint8Array | null, nonce?: Uint8Array): Buffer;
  open(sealed: Uint8Array, ad?: Uint8Array | null): Buffer;
}
