// Runs fn over items with up to `concurrency` calls in flight, yielding results in input order.
// Restores use it to prefetch blobs while writing sequentially; memory is bounded by the window,
// and items are pulled lazily, so a source of any length (a terabyte disk's block list) is fine.
/**
 * `onDiscard` receives results that were computed ahead but never consumed (the consumer stopped early
 * or failed), so resources they hold can be given back.
 */
export async function* orderedMap<T, R>(items: AsyncIterable<T> | Iterable<T>, concurrency: number, fn: (item: T) => Promise<R>, onDiscard?: (r: R) => void): AsyncGenerator<R> {
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
  try {
    await fill();
    while (window.length > 0) {
      const r = await window.shift()!;
      await fill();
      yield r;
    }
  } finally {
    if (onDiscard) for (const p of window.splice(0)) p.then(onDiscard, () => undefined);
  }
}
