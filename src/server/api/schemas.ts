// The API's shapes, once: requests are parsed with them, and the OpenAPI document (openapi.ts) is
// generated from them, so the document cannot drift from what the server accepts and answers.
import { z } from 'zod';

const time = z.string().describe('ISO 8601 time');
const nullableTime = time.nullable();

export const ErrorBody = z.object({
  error: z.object({ code: z.string(), message: z.string(), hint: z.string().optional() }),
});

export const Health = z.object({ status: z.literal('ok'), version: z.string() });

export const UserOut = z.object({ name: z.string(), role: z.enum(['admin', 'operator', 'viewer']) });

export const LoginIn = z.object({ username: z.string().min(1).max(200), password: z.string().min(1).max(1000) });
export const LoginOut = z.object({ user: UserOut, csrfToken: z.string() });
export const MeOut = z.object({ user: UserOut, csrfToken: z.string().optional() });

export const UserIn = z.object({ name: z.string().min(1).max(200), password: z.string().min(1).max(1000), role: z.enum(['admin', 'operator', 'viewer']) }).strict();
export const UserPatch = z.object({ password: z.string().min(1).max(1000).optional(), currentPassword: z.string().min(1).max(1000).optional(), role: z.enum(['admin', 'operator', 'viewer']).optional() }).strict();
export const UserInfo = z.object({ id: z.number().int(), name: z.string(), role: z.enum(['admin', 'operator', 'viewer']), createdAt: time, updatedAt: time });
export const UserList = z.object({ users: z.array(UserInfo) });

export const TokenIn = z.object({ name: z.string().min(1).max(200) }).strict();
export const TokenOut = z.object({ id: z.string(), name: z.string(), token: z.string().describe('shown once: send it as Authorization: Bearer <token>') });

export const JobDefinitionIn = z
  .object({
    kind: z.enum(['vm', 'folder', 'disk']),
    sources: z.array(z.string().min(1).max(4096)).min(1).max(1000),
    repository: z.string().min(1).max(4096).optional(),
    schedule: z.object({ cron: z.string().min(1).max(200), timeZone: z.string().min(1).max(100).optional() }).strict().optional(),
    tags: z.array(z.string().min(1).max(200)).max(50).optional(),
    resources: z.array(z.string().min(1)).max(1000).optional(),
    options: z
      .object({
        connect: z.array(z.string().min(1)).optional(),
        group: z.boolean().optional(),
        consistency: z.enum(['application', 'auto', 'crash']).optional(),
        mode: z.enum(['snapshot', 'suspend', 'stop']).optional(),
        scratchDir: z.string().min(1).optional(),
        exclude: z.array(z.string().min(1)).optional(),
        oneFileSystem: z.boolean().optional(),
        limitRead: z.string().regex(/^\d+(\.\d+)?[KMGT]?$/i).optional(),
        limitUpload: z.string().regex(/^\d+(\.\d+)?[KMGT]?$/i).optional(),
        /** Shell commands run by the server around the backup: a failing pre-command fails the run, nothing is backed up. */
        /** Retention after each successful run, among this job's restore points (bulwark forget). */
        keep: z
          .object({ last: z.number().int().min(1), hourly: z.number().int().min(1), daily: z.number().int().min(1), weekly: z.number().int().min(1), monthly: z.number().int().min(1), yearly: z.number().int().min(1) })
          .partial()
          .strict()
          .refine((k) => Object.keys(k).length > 0, 'keep needs at least one of last, hourly, daily, weekly, monthly, yearly')
          .optional(),
        /** With keep: also remove the data no restore point needs any more. */
        prune: z.boolean().optional(),
        preCommand: z.string().min(1).max(4096).optional(),
        postCommand: z.string().min(1).max(4096).optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

export const JobDefinitionOut = JobDefinitionIn.extend({ repository: z.string() });

export const JobIn = z.object({ name: z.string().min(1).max(200), definition: JobDefinitionIn, enabled: z.boolean().optional() }).strict();
export const JobPatch = z.object({ name: z.string().min(1).max(200).optional(), definition: JobDefinitionIn.optional(), enabled: z.boolean().optional() }).strict();

export const JobOut = z.object({
  id: z.number().int(),
  name: z.string(),
  enabled: z.boolean(),
  definition: JobDefinitionOut,
  nextRunAt: nullableTime,
  createdAt: time,
  updatedAt: time,
});

export const RunStatus = z.enum(['queued', 'running', 'success', 'warning', 'failure', 'interrupted']);

export const RunOut = z.object({
  id: z.string(),
  jobId: z.number().int().nullable(),
  jobName: z.string(),
  trigger: z.enum(['scheduled', 'manual', 'catch-up', 'rebuilt']),
  status: RunStatus,
  queuedAt: time,
  startedAt: nullableTime,
  endedAt: nullableTime,
  summary: z.record(z.string(), z.unknown()).nullable(),
});

export const RunItemOut = z.object({
  id: z.number().int(),
  name: z.string(),
  status: z.enum(['pending', 'running', 'success', 'warning', 'failure', 'interrupted']),
  consistency: z.enum(['application', 'filesystem', 'crash']).nullable(),
  bytesRead: z.number().nullable(),
  bytesStored: z.number().nullable(),
  durationMs: z.number().nullable(),
  error: z.string().nullable(),
  hint: z.string().nullable(),
  snapshotId: z.string().nullable(),
});

export const EventOut = z.object({ id: z.number().int(), time, level: z.enum(['debug', 'info', 'warning', 'error']), message: z.string() });

export const RunDetail = z.object({ run: RunOut, items: z.array(RunItemOut) });
export const RunList = z.object({ runs: z.array(RunOut) });
export const JobList = z.object({ jobs: z.array(JobOut) });
export const EventList = z.object({ events: z.array(EventOut), next: z.number().int() });

export const RepositoryOut = z.object({ name: z.string(), location: z.string() });
export const RepositoryIn = z.object({ location: z.string().min(1).max(4096), password: z.string().min(1).max(1000) }).strict();
export const RepositoryList = z.object({ repositories: z.array(RepositoryOut) });

export const SnapshotOut = z.object({
  id: z.string(),
  time,
  kind: z.enum(['files', 'disk', 'vm']),
  source: z.string(),
  hostname: z.string(),
  tags: z.array(z.string()),
  /** Bytes read at backup time, and new bytes the restore point added to the repository. */
  bytes: z.number(),
  bytesNew: z.number(),
  consistency: z.string().nullable(),
});
export const SnapshotList = z.object({ snapshots: z.array(SnapshotOut) });

export const TreeOut = z.object({
  path: z.string(),
  entries: z.array(z.object({ name: z.string(), kind: z.enum(['dir', 'file', 'symlink']), size: z.number(), mtime: time })),
});

export const Dashboard = z.object({
  jobs: z.array(z.object({ job: JobOut, lastRun: RunOut.nullable(), nextRunAt: nullableTime })),
  repositories: z.array(RepositoryOut.extend({ snapshots: z.number().int().nullable(), bytes: z.number().nullable(), error: z.string().optional() })),
  recentRuns: z.array(RunOut),
});

export const RestoreIn = z
  .object({
    repository: z.string().min(1).max(4096).optional(),
    snapshot: z.string().regex(/^[0-9a-f]{8,64}$/),
    kind: z.enum(['files', 'vm']),
    path: z.string().min(1).max(4096).optional(),
    target: z.string().min(1).max(4096),
    format: z.enum(['raw', 'qcow2']).optional(),
    instant: z.boolean().optional(),
    define: z.boolean().optional(),
  })
  .strict();

export const RestoreOut = z.object({
  id: z.string(),
  request: RestoreIn.extend({ repository: z.string() }),
  status: z.enum(['running', 'success', 'failure']),
  startedAt: time,
  endedAt: nullableTime,
  output: z.array(z.string()),
  error: z.string().nullable(),
  hint: z.string().nullable(),
});
export const RestoreList = z.object({ restores: z.array(RestoreOut) });

export const Finding = z.object({ severity: z.enum(['error', 'warning', 'info']), vm: z.string().optional(), message: z.string(), fix: z.string().optional() });
export const VmList = z.object({
  vms: z.array(z.object({ name: z.string(), state: z.string(), address: z.string().optional(), agent: z.string().optional(), disks: z.number().int().optional() })),
  findings: z.array(Finding),
});
export const DoctorOut = z.object({ findings: z.array(Finding) });
