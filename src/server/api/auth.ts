// Who is asking: a session cookie (the web UI) or an API token (scripts). A session's changing
// requests must also carry its CSRF token in a header, which a form or a link on another site
// cannot set; a token's cannot be sent by a browser on its own, so it needs none.
import type { Context, MiddlewareHandler } from 'hono';
import { getCookie } from 'hono/cookie';
import type { Catalog, User } from '../catalog/catalog.js';
import { ApiError } from './errors.js';

export const SESSION_COOKIE = 'bulwark_session';
export const CSRF_HEADER = 'X-CSRF-Token';

export interface Caller {
  user: User;
  via: 'session' | 'token';
  csrfToken?: string;
}

export type AuthEnv = { Variables: { caller: Caller } };

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

export function authenticate(catalog: Catalog): MiddlewareHandler<AuthEnv> {
  return async (c, next) => {
    const header = c.req.header('Authorization');
    if (header !== undefined) {
      const m = /^Bearer\s+(\S+)$/i.exec(header);
      const found = m ? catalog.verifyToken(m[1]!) : undefined;
      if (!found) throw new ApiError(401, 'unauthorized', 'the API token is not valid', 'create a token in the settings, and send it as Authorization: Bearer <token>');
      c.set('caller', { user: found.user, via: 'token' });
      return next();
    }
    const sid = getCookie(c, SESSION_COOKIE);
    const session = sid ? catalog.getSession(sid) : undefined;
    if (!session) throw new ApiError(401, 'unauthorized', 'log in first', 'POST /api/v1/login, or send an API token');
    if (!SAFE.has(c.req.method)) {
      const token = c.req.header(CSRF_HEADER) ?? '';
      if (!catalog.checkCsrf(session, token)) throw new ApiError(403, 'csrf', `a changing request needs the session's ${CSRF_HEADER} header`, 'take the token from the login answer or GET /api/v1/me');
    }
    c.set('caller', { user: session.user, via: 'session', csrfToken: session.csrfToken });
    return next();
  };
}

/** Viewers read; operators also run jobs; admins also change jobs, users and settings. */
export function requireRole(c: Context<AuthEnv>, role: 'operator' | 'admin'): void {
  const have = c.get('caller').user.role;
  const rank = { viewer: 0, operator: 1, admin: 2 } as const;
  if (rank[have] < rank[role]) throw new ApiError(403, 'forbidden', `this needs the ${role} role; '${c.get('caller').user.name}' is ${have}`);
}
