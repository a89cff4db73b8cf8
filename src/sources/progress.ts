// Progress of a backup or restore, as counters the front ends render (bar, plain lines, JSON events).
export interface Progress {
  files: number;
  dirs: number;
  bytesDone: number;
  bytesNew: number;
  /** Totals when known (a scan ran ahead), for percentages and ETA. */
  filesTotal?: number;
  bytesTotal?: number;
  errors: number;
  current?: string;
}

export type ProgressSink = (p: Readonly<Progress>) => void;

export function newProgress(): Progress {
  return { files: 0, dirs: 0, bytesDone: 0, bytesNew: 0, errors: 0 };
}
