// Progress display: a bar on a terminal, a plain line every few seconds otherwise, JSON events with --json.
import cliProgress from 'cli-progress';
import type { Progress } from '../sources/progress.js';
import { bytes, duration, rate } from './format.js';

export interface ProgressView {
  update(p: Readonly<Progress>): void;
  stop(): void;
}

/** Totals are worth a scan only where someone sees them: a progress bar, or JSON events. */
export function wantsTotals(mode: { json: boolean; quiet: boolean }): boolean {
  return mode.json || (!mode.quiet && process.stderr.isTTY === true);
}

export function progressView(mode: { json: boolean; quiet: boolean }, label: string): ProgressView {
  const started = Date.now();
  if (mode.json) {
    let last = 0;
    return {
      update(p) {
        const now = Date.now();
        if (now - last < 1000) return;
        last = now;
        process.stdout.write(JSON.stringify({ type: 'progress', action: label, elapsedMs: now - started, ...p }) + '\n');
      },
      stop() {},
    };
  }
  if (mode.quiet) return { update() {}, stop() {} };
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream: process.stderr,
        format: `${label} [{bar}] {pct} | {done} | {files} files | {rate} | ETA {etaText}`,
        hideCursor: true,
        clearOnComplete: true,
      },
      cliProgress.Presets.shades_classic,
    );
    let startedBar = false;
    return {
      update(p) {
        const elapsed = Date.now() - started;
        // Until the scan ahead knows the total, the bar stays empty and says so rather than guess.
        const known = p.bytesTotal !== undefined && p.bytesTotal > 0;
        const total = known ? p.bytesTotal! : 1;
        const value = known ? Math.min(p.bytesDone, total) : 0;
        const speed = elapsed > 0 ? p.bytesDone / elapsed : 0;
        const payload = {
          pct: known ? `${Math.floor((100 * value) / total)}%` : '?%',
          done: bytes(p.bytesDone),
          files: p.files,
          rate: rate(p.bytesDone, elapsed),
          etaText: known && speed > 0 ? duration((total - value) / speed) : '?',
        };
        if (!startedBar) {
          bar.start(total, value, payload);
          startedBar = true;
        } else {
          bar.setTotal(total);
          bar.update(value, payload);
        }
      },
      stop() {
        if (startedBar) bar.stop();
        startedBar = false;
      },
    };
  }
  let last = Date.now();
  return {
    update(p) {
      const now = Date.now();
      if (now - last < 5000) return;
      last = now;
      const pct = p.bytesTotal ? ` (${((100 * p.bytesDone) / p.bytesTotal).toFixed(1)}%)` : '';
      process.stderr.write(`[${duration(now - started)}] ${label}: ${bytes(p.bytesDone)}${pct}, ${p.files} files, ${rate(p.bytesDone, now - started)}\n`);
    },
    stop() {},
  };
}
