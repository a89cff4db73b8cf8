// Every failure of the API as one JSON shape with a status a client can act on; the mapping from the
// engine's typed errors to HTTP lives here and nowhere else.
import { CatalogError } from '../catalog/catalog.js';
import { BulwarkError } from '../../util/errors.js';

export type ApiStatus = 400 | 401 | 403 | 404 | 409 | 413 | 415 | 422 | 500 | 503;

export class ApiError extends Error {
  constructor(
    readonly status: ApiStatus,
    readonly code: string,
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof CatalogError) {
    const status = err.reason === 'invalid' ? 422 : err.reason === 'conflict' ? 409 : err.reason === 'not-found' ? 404 : 503;
    return new ApiError(status, err.reason, err.message, err.hint);
  }
  if (err instanceof BulwarkError) {
    const status = err.code === 'usage' ? 400 : err.code === 'not-found' || err.code === 'repository-not-found' ? 404 : err.code === 'repository-locked' ? 409 : err.code === 'wrong-password' ? 422 : 503;
    return new ApiError(status, err.code, err.message, err.hint);
  }
  return new ApiError(500, 'internal', 'internal error', 'the server log has the details');
}

export function errorBody(e: ApiError): { error: { code: string; message: string; hint?: string } } {
  return { error: { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}) } };
}
