export declare class GcPacer {
  /** `kind` 'minor' collects only the young generation: enough for buffers dropped as soon as made. */
  constructor(everyBytes: number, kind?: 'minor' | 'major');
  /** Buffers of this many bytes were just dropped (written out, handed on); collects when enough were. */
  dropped(bytes: number): void;
}

/** One full collection now: after a phase that dropped a lot at once (building the index cache). */
export declare function collectGarbage(): void;
