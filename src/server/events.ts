// What the server tells the browsers watching it (GET /api/v1/stream): runs changing state, progress
// and log lines, as they happen. Nothing is queued for a listener that is not there: the catalog
// holds the history, this carries only the present.
import { EventEmitter } from 'node:events';
import type { CatalogEvent, Run } from './catalog/catalog.js';

export interface ProgressUpdate {
  runId: string;
  bytesDone: number;
  bytesTotal?: number;
  files: number;
  elapsedMs: number;
}

export type LiveEvent =
  | { type: 'run'; run: Run }
  | { type: 'progress'; progress: ProgressUpdate }
  | { type: 'event'; event: CatalogEvent };

export class LiveEvents {
  private readonly emitter = new EventEmitter();
  /** The last progress of each running run, so a page opened mid-run shows it at once. */
  private readonly lastProgress = new Map<string, ProgressUpdate>();

  constructor() {
    // Every open browser tab is a listener; the default warning at 10 would be noise, not a leak.
    this.emitter.setMaxListeners(0);
  }

  publish(e: LiveEvent): void {
    if (e.type === 'progress') this.lastProgress.set(e.progress.runId, e.progress);
    if (e.type === 'run' && e.run.endedAt) this.lastProgress.delete(e.run.id);
    this.emitter.emit('live', e);
  }

  progressOf(runId: string): ProgressUpdate | undefined {
    return this.lastProgress.get(runId);
  }

  subscribe(listener: (e: LiveEvent) => void): () => void {
    this.emitter.on('live', listener);
    return () => this.emitter.off('live', listener);
  }
}
