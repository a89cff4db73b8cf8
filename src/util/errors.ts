// Typed user-facing errors. A BulwarkError carries a stable code, what failed, and a hint a person can
// act on; the CLI maps codes to exit codes in one place (cli/exit-codes.ts). Programmer errors stay
// plain Error and surface as bugs.

export type ErrorCode =
  | 'usage'
  | 'failed'
  | 'partial'
  | 'repository-not-found'
  | 'wrong-password'
  | 'repository-locked'
  | 'repository-exists'
  | 'repository-corrupt'
  | 'append-only'
  | 'no-space'
  | 'not-found'
  | 'io'
  | 'protocol'
  | 'timeout';

export interface BulwarkErrorOptions {
  hint?: string;
  cause?: unknown;
}

export class BulwarkError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, options: BulwarkErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.hint = options.hint;
  }
}

/** Wraps a cause in the one template every layer uses: "unable to <verb> <object> '<id>': <cause>". */
export function unable(verb: string, object: string, id: string, cause: unknown, code: ErrorCode = 'failed'): BulwarkError {
  const reason = cause instanceof Error ? cause.message : String(cause);
  const hint = cause instanceof BulwarkError ? cause.hint : undefined;
  const inner = cause instanceof BulwarkError ? cause.code : code;
  return new BulwarkError(inner, `unable to ${verb} ${object} '${id}': ${reason}`, { cause, ...(hint ? { hint } : {}) });
}

/** Node system errors carry `code` (ENOENT, ENOSPC, …); this reads it without casts at each call site. */
export function errnoCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof (err as { code: unknown }).code === 'string') {
    return (err as { code: string }).code;
  }
  return undefined;
}
