// Tiny hash router: #/jobs, #/jobs/new, #/jobs/3, #/runs/<id>, #/snapshots/<id>?repository=x&path=/a
import { useSyncExternalStore } from 'react';

export type Route =
  | { page: 'dashboard' }
  | { page: 'jobs' }
  | { page: 'job-edit'; id: number | null }
  | { page: 'run'; id: string }
  | { page: 'snapshots'; repository: string }
  | { page: 'snapshot'; id: string; repository: string; path: string }
  | { page: 'restore'; snapshot: string; repository: string; path: string; kind: 'files' | 'vm' }
  | { page: 'restore-status'; id: string }
  | { page: 'doctor' }
  | { page: 'settings' }
  | { page: 'not-found'; hash: string };

export function parseRoute(hash: string): Route {
  const raw = hash.replace(/^#/, '') || '/';
  const qIdx = raw.indexOf('?');
  const pathPart = qIdx >= 0 ? raw.slice(0, qIdx) : raw;
  const query = new URLSearchParams(qIdx >= 0 ? raw.slice(qIdx + 1) : '');
  const parts = pathPart.split('/').filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  const [a, b] = parts;
  if (!a || a === 'dashboard') return { page: 'dashboard' };
  if (a === 'jobs') {
    if (!b) return { page: 'jobs' };
    if (b === 'new') return { page: 'job-edit', id: null };
    const id = Number(b);
    if (Number.isInteger(id)) return { page: 'job-edit', id };
  }
  if (a === 'runs' && b) return { page: 'run', id: b };
  if (a === 'snapshots') {
    const repository = query.get('repository') ?? '';
    if (!b) return { page: 'snapshots', repository };
    return { page: 'snapshot', id: b, repository, path: normalizePath(query.get('path') ?? '/') };
  }
  if (a === 'restore') {
    if (b) return { page: 'restore-status', id: b };
    return { page: 'restore', snapshot: query.get('snapshot') ?? '', repository: query.get('repository') ?? '', path: normalizePath(query.get('path') ?? '/'), kind: query.get('kind') === 'vm' ? 'vm' : 'files' };
  }
  if (a === 'doctor') return { page: 'doctor' };
  if (a === 'settings') return { page: 'settings' };
  return { page: 'not-found', hash: raw };
}

export function normalizePath(p: string): string {
  const parts = p.split('/').filter((s) => s && s !== '.');
  return '/' + parts.join('/');
}

export function href(path: string, query?: Record<string, string | undefined>): string {
  let h = '#' + path;
  if (query) {
    const s = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v) s.set(k, v);
    const str = s.toString();
    if (str) h += '?' + str;
  }
  return h;
}

export function navigate(path: string, query?: Record<string, string | undefined>): void {
  window.location.hash = href(path, query);
}

function subscribe(cb: () => void): () => void {
  window.addEventListener('hashchange', cb);
  return () => window.removeEventListener('hashchange', cb);
}
const getHash = () => window.location.hash;

export function useHash(): string {
  return useSyncExternalStore(subscribe, getHash, getHash);
}

export function useRoute(): Route {
  return parseRoute(useHash());
}
