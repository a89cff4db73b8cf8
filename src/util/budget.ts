// A counting budget (bytes in flight, requests in flight): acquire waits until the amount fits.
// Used to keep memory flat however large the input is.
export class Budget {
  private used = 0;
  private readonly waiters: { amount: number; resolve(): void }[] = [];

  constructor(private readonly limit: number) {}

  get inUse(): number {
    return this.used;
  }

  async acquire(amount: number): Promise<void> {
    // An amount larger than the whole limit is let through alone rather than waiting forever.
    if (this.waiters.length === 0 && (this.used + amount <= this.limit || this.used === 0)) {
      this.used += amount;
      return;
    }
    await new Promise<void>((resolve) => this.waiters.push({ amount, resolve }));
  }

  release(amount: number): void {
    this.used -= amount;
    while (this.waiters.length > 0) {
      const w = this.waiters[0]!;
      if (this.used + w.amount > this.limit && this.used !== 0) break;
      this.waiters.shift();
      this.used += w.amount;
      w.resolve();
    }
  }
}
