/**
 * Memory shared by several results (the blobs of one worker reply): handed back once every one of them
 * is done with. `release` runs once, when the count reaches zero (at once for a count of zero).
 */
export class Lease {
  constructor(
    private count: number,
    private readonly release: () => void,
  ) {
    if (count === 0) release();
  }

  drop(): void {
    if (--this.count === 0) this.release();
  }
}
