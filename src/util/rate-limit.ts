// A byte-rate limit for reads that compete with a running VM for its disk: each take() waits until
// the bytes taken so far fit the rate. Concurrent takers are served in order.
export interface Sleeper {
  now(): number;
  sleep(ms: number): Promise<void>;
}

const realTime: Sleeper = { now: () => performance.now(), sleep: (ms) => new Promise((r) => setTimeout(r, ms)) };

export class RateLimiter {
  /** When the bytes granted so far will have been "paid for" at the rate (ms, on the sleeper's clock). */
  private paidUntil: number;

  constructor(
    private readonly bytesPerSecond: number,
    private readonly time: Sleeper = realTime,
  ) {
    if (!(bytesPerSecond > 0)) throw new RangeError('rate must be positive');
    this.paidUntil = time.now();
  }

  async take(bytes: number): Promise<void> {
    const now = this.time.now();
    // Idle time is not saved up beyond a moment: no burst after a pause.
    const start = Math.max(this.paidUntil, now);
    this.paidUntil = start + (bytes / this.bytesPerSecond) * 1000;
    const wait = start - now;
    if (wait > 0) await this.time.sleep(wait);
  }
}
