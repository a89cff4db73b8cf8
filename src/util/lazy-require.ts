// Heavy dependencies that only some commands use (the S3 SDK, ssh2, basic-ftp, the XML parser) are
// loaded on first use, not with every command: loaded up front they cost every run of the CLI about
// 60 MB of memory and most of a second of start-up, a local backup included (docs/performance.md).
import { createRequire } from 'node:module';

const requireCjs = createRequire(import.meta.url);

/** A getter for a CommonJS package, loaded by the first call. Type it with `import type * as M from '…'`. */
export function lazyRequire<T>(specifier: string): () => T {
  let loaded: T | undefined;
  return () => (loaded ??= requireCjs(specifier) as T);
}
