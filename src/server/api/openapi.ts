// The OpenAPI 3.1 document of /api/v1, generated from the schemas the server parses and answers with.
import { z } from 'zod';
import * as S from './schemas.js';

type Method = 'get' | 'post' | 'put' | 'delete';

interface Operation {
  summary: string;
  /** Component name of the JSON body answered with 2xx; 'stream' for bytes, 'sse' for event streams, null for none. */
  ok: keyof typeof COMPONENTS | 'stream' | 'sse' | null;
  status?: number;
  body?: keyof typeof COMPONENTS;
  params?: string[];
  query?: string[];
  public?: boolean;
}

const COMPONENTS = {
  Error: S.ErrorBody,
  Health: S.Health,
  LoginIn: S.LoginIn,
  LoginOut: S.LoginOut,
  Me: S.MeOut,
  TokenIn: S.TokenIn,
  UserIn: S.UserIn,
  UserPatch: S.UserPatch,
  User: S.UserInfo,
  UserList: S.UserList,
  Token: S.TokenOut,
  JobIn: S.JobIn,
  JobPatch: S.JobPatch,
  Job: S.JobOut,
  JobList: S.JobList,
  Run: S.RunOut,
  RunList: S.RunList,
  RunDetail: S.RunDetail,
  EventList: S.EventList,
  Dashboard: S.Dashboard,
  RepositoryList: S.RepositoryList,
  RepositoryIn: S.RepositoryIn,
  Repository: S.RepositoryOut,
  SnapshotList: S.SnapshotList,
  Tree: S.TreeOut,
  VmList: S.VmList,
  RestoreIn: S.RestoreIn,
  Restore: S.RestoreOut,
  RestoreList: S.RestoreList,
  Doctor: S.DoctorOut,
} as const;

export const OPERATIONS: Record<string, Partial<Record<Method, Operation>>> = {
  '/health': { get: { summary: 'liveness and version', ok: 'Health', public: true } },
  '/login': { post: { summary: 'log in: sets the session cookie, answers the CSRF token', ok: 'LoginOut', body: 'LoginIn', public: true } },
  '/logout': { post: { summary: 'end the session', ok: null, status: 204 } },
  '/me': { get: { summary: 'who is logged in', ok: 'Me' } },
  '/users': {
    get: { summary: 'users (admin)', ok: 'UserList' },
    post: { summary: 'create a user (admin)', ok: 'User', status: 201, body: 'UserIn' },
  },
  '/users/{id}': {
    put: { summary: "change a user's password (admin, or the user's own) or role (admin); a new password ends the user's sessions", ok: 'User', body: 'UserPatch', params: ['id'] },
    delete: { summary: 'delete a user (admin; not oneself, not the last admin)', ok: null, status: 204, params: ['id'] },
  },
  '/tokens': { post: { summary: 'create an API token for the caller (shown once)', ok: 'Token', status: 201, body: 'TokenIn' } },
  '/dashboard': { get: { summary: 'last run per job (failures first), next runs, repositories', ok: 'Dashboard' } },
  '/jobs': {
    get: { summary: 'all jobs', ok: 'JobList' },
    post: { summary: 'create a job', ok: 'Job', status: 201, body: 'JobIn' },
  },
  '/jobs/{id}': {
    get: { summary: 'one job', ok: 'Job', params: ['id'] },
    put: { summary: 'change a job', ok: 'Job', body: 'JobPatch', params: ['id'] },
    delete: { summary: 'delete a job (its runs stay)', ok: null, status: 204, params: ['id'] },
  },
  '/jobs/{id}/run': { post: { summary: 'run a job now', ok: 'Run', status: 202, params: ['id'] } },
  '/runs': { get: { summary: 'runs, newest first', ok: 'RunList', query: ['jobId', 'limit'] } },
  '/runs/{id}': { get: { summary: 'a run with its items', ok: 'RunDetail', params: ['id'] } },
  '/runs/{id}/events': { get: { summary: "a run's event log", ok: 'EventList', params: ['id'], query: ['after', 'limit'] } },
  '/stream': { get: { summary: 'server-sent events: run, progress, event', ok: 'sse' } },
  '/repositories': {
    get: { summary: 'repositories the server knows', ok: 'RepositoryList' },
    post: { summary: "give the server a repository's password (admin): checked by opening the repository, then kept sealed", ok: 'Repository', status: 201, body: 'RepositoryIn' },
  },
  '/snapshots': { get: { summary: 'restore points of a repository', ok: 'SnapshotList', query: ['repository'] } },
  '/snapshots/{id}/tree': { get: { summary: 'a folder inside a restore point', ok: 'Tree', params: ['id'], query: ['path', 'repository'] } },
  '/snapshots/{id}/files': { get: { summary: 'one file out of a restore point, streamed', ok: 'stream', params: ['id'], query: ['path', 'repository'] } },
  '/restores': {
    get: { summary: 'restores started since the server started, newest first', ok: 'RestoreList' },
    post: { summary: 'restore files or whole VM disks into a new or empty folder', ok: 'Restore', status: 202, body: 'RestoreIn' },
  },
  '/restores/{id}': { get: { summary: 'one restore: status and its output', ok: 'Restore', params: ['id'] } },
  '/vms': { get: { summary: 'VMs the server can reach (empty without a hypervisor)', ok: 'VmList' } },
  '/doctor': { get: { summary: 'pre-flight findings with their fixes', ok: 'Doctor' } },
};

function schemaOf(s: z.ZodType): Record<string, unknown> {
  const j = z.toJSONSchema(s, { target: 'draft-2020-12', io: 'output', unrepresentable: 'any' }) as Record<string, unknown>;
  delete j['$schema'];
  return j;
}

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });

export function openApiDocument(version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const [path, ops] of Object.entries(OPERATIONS)) {
    paths[path] = {};
    for (const [method, op] of Object.entries(ops) as [Method, Operation][]) {
      const status = String(op.status ?? 200);
      const content =
        op.ok === 'stream'
          ? { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } }
          : op.ok === 'sse'
            ? { 'text/event-stream': { schema: { type: 'string' } } }
            : op.ok
              ? { 'application/json': { schema: ref(op.ok) } }
              : undefined;
      const errors = Object.fromEntries(
        // 404 also where a body or query names something unknown (a repository, a restore point); 503
        // when a repository's store cannot be reached.
        ['400', ...(op.public ? [] : ['401', '403', '404', '503']), ...(method !== 'get' ? ['409'] : []), ...(op.body ? ['413', '415', '422'] : []), '500'].map((c) => [c, { description: 'error', content: { 'application/json': { schema: ref('Error') } } }]),
      );
      paths[path][method] = {
        summary: op.summary,
        ...(op.public ? { security: [] } : {}),
        parameters: [
          ...(op.params ?? []).map((name) => ({ name, in: 'path', required: true, schema: { type: 'string' } })),
          ...(op.query ?? []).map((name) => ({ name, in: 'query', required: false, schema: { type: 'string' } })),
        ],
        ...(op.body ? { requestBody: { required: true, content: { 'application/json': { schema: ref(op.body) } } } } : {}),
        responses: { [status]: { description: 'ok', ...(content ? { content } : {}) }, ...errors },
      };
    }
  }
  return {
    openapi: '3.1.0',
    info: { title: 'Bulwark server API', version },
    servers: [{ url: '/api/v1' }],
    components: {
      schemas: Object.fromEntries(Object.entries(COMPONENTS).map(([n, s]) => [n, schemaOf(s)])),
      securitySchemes: {
        session: { type: 'apiKey', in: 'cookie', name: 'bulwark_session', description: 'changing requests also need the X-CSRF-Token header' },
        token: { type: 'http', scheme: 'bearer' },
      },
    },
    security: [{ session: [] }, { token: [] }],
    paths,
  };
}
