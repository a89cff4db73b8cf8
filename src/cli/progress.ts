// Progress display: a bar on a terminal, a plain line every few seconds otherwise, JSON events with --json.
import cliProgress from 'cli-progress';
import type { Progress } from '../sources/progress.js';
import { bytes, duration, rate } from './format.js';

export interface ProgressView {
  update(p: Readonly<Progress>): void;
  stop(): void;
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
        format: `${label} [{bar}] {percentage}% | {done} | {files} files | {rate} | ETA {eta_formatted}`,
        hideCursor: true,
        clearOnComplete: true,
        etaBuffer: 50,
      },
      cliProgress.Presets.shades_classic,
    );
    let startedBar = false;
    return {
      update(p) {
        const total = p.bytesTotal ?? Math.max(p.bytesDone, 1);
        const payload = { done: bytes(p.bytesDone), files: p.files, rate: rate(p.bytesDone, Date.now() - started) };
        if (!startedBar) {
          bar.start(total, p.bytesDone, payload);
          startedBar = true;
        } else {
          bar.setTotal(total);
          bar.update(p.bytesDone, payload);
        }
      },
      stop() {
        if (startedBar) bar.stop();
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
