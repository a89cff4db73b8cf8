// Typed client for the Bulwark JSON API (/api/v1). Same-origin, cookie session + CSRF header.

export const API_BASE = '/api/v1';

export type Role = string;
export interface User { name: string; role: Role }
export interface Session { user: User; csrfToken?: string }

export type RunStatus = 'queued' | 'running' | 'success' | 'warning' | 'failure' | 'interrupted';
export type JobKind = 'vm' | 'folder';

export interface JobOptions {
  connect?: string[];
  group?: boolean;
  consistency?: string;
  mode?: string;
  exclude?: string[];
  [key: string]: unknown;
}
export interface JobDefinition {
  kind: JobKind;
  sources: string[];
  repository?: string;
  schedule?: { cron: string; timeZone?: string };
  tags?: string[];
  options?: JobOptions;
  [key: string]: unknown;
}
export interface Job {
  id: number;
  name: string;
  enabled: boolean;
  definition: JobDefinition;
  nextRunAt: string | null;
  createdAt: string;
  updatedAt: string;
}
export interface Run {
  id: string;
  jobId: number | null;
  jobName: string;
  trigger: string;
  status: RunStatus;
  queuedAt: string;
  startedAt: string | null;
  endedAt: string | null;
  summary: Record<string, unknown> | null;
}
export interface RunItem {
  id: number | string;
  name: string;
  status: string;
  consistency: string | null;
  bytesRead: number | null;
  bytesStored: number | null;
  durationMs: number | null;
  error: string | null;
  hint: string | null;
  snapshotId: string | null;
}
export interface RunEvent { id: number; time: string; level: string; message: string }
export interface Progress { runId: string; bytesDone: number; bytesTotal?: number; files: number; elapsedMs: number }

export interface DashboardJob { job: Job; lastRun: Run | null; nextRunAt: string | null }
export interface RepositorySummary { name: string; location: string; snapshots: number | null; bytes: number | null; error?: string }
export interface Dashboard { jobs: DashboardJob[]; repositories: RepositorySummary[]; recentRuns: Run[] }

export interface Repository { name: string; location: string }
export interface Snapshot {
  id: string;
  time: string;
  kind: 'files' | 'disk' | 'vm';
  source: string;
  hostname: string;
  tags: string[];
  bytes: number;
  /** Data this snapshot added to the repository (after deduplication), when the server reports it. */
  bytesNew?: number;
  consistency?: string | null;
}
export interface TreeEntry { name: string; kind: 'dir' | 'file' | 'symlink'; size: number; mtime: string }
export interface Tree { path: string; entries: TreeEntry[] }

export type Severity = 'error' | 'warning' | 'info';
export interface Finding { severity: Severity; vm?: string; message: string; fix?: string }
export interface Vm { name: string; state: string; disks?: number | unknown[]; address?: string; agent?: string }
export interface RestoreRequest {
  snapshot: string;
  kind: 'files' | 'vm';
  target: string;
  repository?: string;
  path?: string;
  format?: 'raw' | 'qcow2';
  instant?: boolean;
  define?: boolean;
}
export interface Restore {
  id: string;
  request: RestoreRequest & { repository: string };
  status: 'running' | 'success' | 'failure';
  startedAt: string;
  endedAt: string | null;
  output: string[];
  error: string | null;
  hint: string | null;
}
export interface Health { status: string; version: string }

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly hint: string | undefined;
  constructor(status: number, code: string, message: string, hint?: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.hint = hint;
  }
}

let csrfToken: string | null = null;
let unauthorizedHandler: (() => void) | null = null;

export function setCsrfToken(token: string | null): void {
  csrfToken = token;
}
/** Called when any request (other than login/me) answers 401: the session has expired. */
export function onUnauthorized(handler: (() => void) | null): void {
  unauthorizedHandler = handler;
}

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';

async function request<T>(method: Method, path: string, body?: unknown, opts: { quiet401?: boolean } = {}): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let res: Response;
  try {
    res = await fetch(API_BASE + path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'network', 'Cannot reach the Bulwark server.', e instanceof Error ? e.message : undefined);
  }
  const text = await res.text();
  let data: unknown = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const err = (data as { error?: { code?: string; message?: string; hint?: string } } | null)?.error;
    const apiErr = new ApiError(
      res.status,
      err?.code ?? `http_${res.status}`,
      err?.message ?? `Request failed: ${res.status} ${res.statusText}`,
      err?.hint,
    );
    if (res.status === 401 && !opts.quiet401 && unauthorizedHandler) unauthorizedHandler();
    throw apiErr;
  }
  return data as T;
}

const q = (params: Record<string, string | number | undefined | null>): string => {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') s.set(k, String(v));
  const str = s.toString();
  return str ? `?${str}` : '';
};

export const api = {
  login: (username: string, password: string) =>
    request<Session>('POST', '/login', { username, password }, { quiet401: true }),
  me: () => request<Session>('GET', '/me', undefined, { quiet401: true }),
  logout: () => request<unknown>('POST', '/logout', {}, { quiet401: true }),

  dashboard: () => request<Dashboard>('GET', '/dashboard'),

  jobs: () => request<{ jobs: Job[] }>('GET', '/jobs'),
  job: (id: number) => request<Job>('GET', `/jobs/${id}`),
  createJob: (body: { name: string; definition: JobDefinition; enabled?: boolean }) => request<Job>('POST', '/jobs', body),
  updateJob: (id: number, body: { name: string; definition: JobDefinition; enabled?: boolean }) =>
    request<Job>('PUT', `/jobs/${id}`, body),
  deleteJob: (id: number) => request<unknown>('DELETE', `/jobs/${id}`),
  runJob: (id: number) => request<Run>('POST', `/jobs/${id}/run`, {}),

  runs: (params: { jobId?: number; limit?: number } = {}) => request<{ runs: Run[] }>('GET', `/runs${q(params)}`),
  run: (id: string) => request<{ run: Run; items: RunItem[] }>('GET', `/runs/${encodeURIComponent(id)}`),
  runEvents: (id: string, after: number) =>
    request<{ events: RunEvent[]; next: number }>('GET', `/runs/${encodeURIComponent(id)}/events${q({ after })}`),

  repositories: () => request<{ repositories: Repository[] }>('GET', '/repositories'),
  snapshots: (repository: string) => request<{ snapshots: Snapshot[] }>('GET', `/snapshots${q({ repository })}`),
  tree: (id: string, path: string, repository: string) =>
    request<Tree>('GET', `/snapshots/${encodeURIComponent(id)}/tree${q({ path, repository })}`),

  startRestore: (body: RestoreRequest) => request<Restore>('POST', '/restores', body),
  restore: (id: string) => request<Restore>('GET', `/restores/${encodeURIComponent(id)}`),

  vms: () => request<{ vms: Vm[]; findings: Finding[] }>('GET', '/vms'),
  doctor: () => request<{ findings: Finding[] }>('GET', '/doctor'),
  health: async (): Promise<Health> => {
    try {
      return await request<Health>('GET', '/health');
    } catch (e) {
      // Some deployments expose the probe at the root only.
      const res = await fetch('/health', { credentials: 'same-origin' }).catch(() => null);
      if (res?.ok) return (await res.json()) as Health;
      throw e;
    }
  },
};

/** Plain URL for a browser download (the session cookie goes along automatically). */
export function fileDownloadUrl(snapshotId: string, fullPath: string, repository: string): string {
  let url = `${API_BASE}/snapshots/${encodeURIComponent(snapshotId)}/files?path=${encodeURIComponent(fullPath)}`;
  if (repository) url += `&repository=${encodeURIComponent(repository)}`;
  return url;
}

export function errorInfo(e: unknown): { message: string; hint?: string } {
  if (e instanceof ApiError) return e.hint ? { message: e.message, hint: e.hint } : { message: e.message };
  if (e instanceof Error) return { message: e.message };
  return { message: String(e) };
}
