// Runs fn over items with up to `concurrency` calls in flight, yielding results in input order.
// Restores use it to prefetch blobs while writing sequentially; memory is bounded by the window,
// and items are pulled lazily, so a source of any length (a terabyte disk's block list) is fine.
export async function* orderedMap<T, R>(items: AsyncIterable<T> | Iterable<T>, concurrency: number, fn: (item: T) => Promise<R>): AsyncGenerator<R> {
  const it: AsyncIterator<T> | Iterator<T> = Symbol.asyncIterator in items ? items[Symbol.asyncIterator]() : items[Symbol.iterator]();
  const window: Promise<R>[] = [];
  let done = false;
  const fill = async (): Promise<void> => {
    while (!done && window.length < concurrency) {
      const n = await it.next();
      if (n.done) {
        done = true;
        break;
      }
      const p = fn(n.value);
      p.catch(() => undefined); // surfaced when awaited below; avoids an unhandled rejection meanwhile
      window.push(p);
    }
  };
  await fill();
  while (window.length > 0) {
    const r = await window.shift()!;
    await fill();
    yield r;
  }
}
