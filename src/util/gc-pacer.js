// V8 frees the memory behind dropped Buffers only when it collects garbage, and collects because of
// them only once tens of MB of it have piled up, per thread, while the JavaScript heap itself stays
// tiny. A backup moving hundreds of MB a second through 1 MiB buffers on three threads (main and two
// workers) then holds most of its RSS in dead buffers. The pacer asks for a collection after a set
// number of bytes of buffers were dropped. A full collection costs milliseconds (a third more CPU for
// a backup when run every 16 MiB); a minor one, enough where buffers die young, costs little.
//
// V8's gc() is exposed only with --expose-gc; the flag is turned on at run time (V8 reads it when a
// context is made), and where that does not work the pacer does nothing. Plain JavaScript, so that the
// blob worker (plain JavaScript too) uses the same code.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let collect = null;
let tried = false;

function gcFunction() {
  if (!tried) {
    tried = true;
    try {
      setFlagsFromString('--expose-gc');
      const fn = runInNewContext('gc');
      collect = typeof fn === 'function' ? fn : null;
    } catch {
      collect = null;
    }
  }
  return collect;
}

export class GcPacer {
  /** `kind` 'minor' collects only the young generation: enough for buffers dropped as soon as made. */
  constructor(everyBytes, kind = 'major') {
    this.everyBytes = everyBytes;
    this.options = kind === 'minor' ? { type: 'minor' } : undefined;
    this.pending = 0;
  }

  /** Buffers of this many bytes were just dropped (written out, handed on); collects when enough were. */
  dropped(bytes) {
    this.pending += bytes;
    if (this.pending < this.everyBytes) return;
    this.pending = 0;
    gcFunction()?.(this.options);
  }
}

/** One full collection now: after a phase that dropped a lot at once (building the index cache). */
export function collectGarbage() {
  gcFunction()?.();
}
