// Loads the native helpers (native/bulwark_native.c). Plain JavaScript with a .d.ts beside it, so the
// blob worker (plain JS, no build step) and the typed modules (util/native.ts) load the one binding the
// same way: the relative path holds from src/ and from dist/ alike.
import { createRequire } from 'node:module';

const BUILT = '../../native/build/Release/bulwark_native.node';

let loaded;

/** The binding, or undefined when it was not built (or BULWARK_NO_NATIVE=1 asks to do without). */
export function nativeBinding() {
  if (loaded === undefined) {
    try {
      loaded = process.env['BULWARK_NO_NATIVE'] === '1' ? null : createRequire(import.meta.url)(BUILT);
    } catch {
      loaded = null;
    }
  }
  return loaded ?? undefined;
}
