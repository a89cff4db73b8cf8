// `bulwark serve` end to end (docs/server.md): the built CLI started as a service, its API driven over
// HTTP, every JSON answer checked against the server's own OpenAPI document. Witnesses from outside
// the server: the restore points `bulwark snapshots` finds in the repository, the downloaded file's
// bytes against the original, the process table after a crash, and `bulwark check`.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient, openApiValidator, processesOfRun, startServe, type RunJson as Run, type ServeProcess } from '../helpers/bulwark-server.js';
import { jsonResult, runCli } from '../helpers/cli.js';
import { makeCliRepository, tempDir, TEST_PASSWORD } from '../helpers/repo.js';
import { signBody, SIGNATURE_HEADER } from '../../src/server/notify/notify.js';
import { startHttp, startSmtp, type TestHttp, type TestSmtp } from '../../src/server/notify/testing/servers.js';

const ADMIN = 'admin-password-for-tests';
const MiB = 1024 * 1024;


let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let serve: ServeProcess | undefined;
let api: ApiClient;
let data: string;
let smtp: TestSmtp;
let hook: TestHttp;
const HOOK_SECRET = 'webhook-secret-for-tests';

async function start(): Promise<void> {
  serve = await startServe(['--state-dir', join(tmp.path, 'server'), '--notify-file', join(tmp.path, 'notify.json'), '--jobs-file', join(tmp.path, 'jobs.json')], env);
  api = new ApiClient(serve.url, await openApiValidator(serve.url));
  expect((await api.login('admin', ADMIN)).status).toBe(200);
}

beforeAll(async () => {
  tmp = await tempDir();
  env = { ...(await makeCliRepository(join(tmp.path, 'repo'), TEST_PASSWORD, join(tmp.path, 'state'))), BULWARK_ADMIN_PASSWORD: ADMIN };
  data = join(tmp.path, 'data');
  await mkdir(join(data, 'sub dir'), { recursive: true });
  await writeFile(join(data, 'hello.txt'), 'hello from the server test\n');
  execFileSync('sh', ['-c', `head -c ${3 * MiB} /dev/urandom > '${join(data, 'sub dir', 'blob ü.bin')}'`]);
  smtp = await startSmtp();
  hook = await startHttp((_req, _n, res) => res.writeHead(204).end());
  await writeFile(
    join(tmp.path, 'notify.json'),
    JSON.stringify([
      { kind: 'email', name: 'ops mail', on: ['failure'], host: '127.0.0.1', port: smtp.port, security: 'none', from: 'bulwark@test.invalid', to: ['ops@test.invalid'], retry: { attempts: 1 } },
      { kind: 'webhook', name: 'chat', on: ['failure', 'success'], url: `${hook.url}/hook`, secret: HOOK_SECRET, retry: { attempts: 1 } },
    ]),
  );
  await writeFile(join(tmp.path, 'jobs.json'), JSON.stringify([{ name: 'from-file', definition: { kind: 'folder', sources: [join(data, 'sub dir')], tags: ['file'] }, enabled: false }]));
  await start();
}, 120_000);

afterAll(async () => {
  await serve?.stop();
  await smtp?.close();
  await hook?.close();
  await tmp?.cleanup();
});

/** The jobs' count, read as a witness that a refused request changed nothing. */
async function jobCount(): Promise<number> {
  return (await api.call<{ jobs: unknown[] }>('GET', '/jobs')).body.jobs.length;
}

describe('bulwark serve', () => {
  let jobId = 0;
  let snapshotId = '';
  let minutely = 0;

  it('answers health, the OpenAPI document and the login without authentication, and nothing else', async () => {
    const anon = new ApiClient(serve!.url);
    expect((await anon.call('GET', '/health')).body).toMatchObject({ status: 'ok' });
    expect((await anon.call<{ openapi: string }>('GET', '/openapi.json')).body.openapi).toBe('3.1.0');
    for (const path of ['/jobs', '/runs', '/me', '/dashboard', '/snapshots', '/stream']) expect((await anon.call('GET', path)).status, path).toBe(401);
    expect((await anon.login('admin', 'wrong password')).status).toBe(401);
    expect((await anon.login('nobody', ADMIN)).status).toBe(401);
  });

  it('creates a job on a schedule that runs every minute (checked at the end)', async () => {
    const r = await api.call<{ id: number; nextRunAt: string }>('POST', '/jobs', { name: 'minutely', definition: { kind: 'folder', sources: [join(data, 'sub dir')], schedule: { cron: '* * * * *', timeZone: 'UTC' } } });
    expect(r.status).toBe(201);
    minutely = r.body.id;
    expect(Date.parse(r.body.nextRunAt) - Date.now()).toBeLessThanOrEqual(61_000);
  });

  it('runs a folder job to the end and the restore point is in the repository', async () => {
    const created = await api.call<{ id: number }>('POST', '/jobs', { name: 'docs', definition: { kind: 'folder', sources: [data], tags: ['web'] } });
    expect(created.status).toBe(201);
    jobId = created.body.id;
    const queued = await api.call<Run>('POST', `/jobs/${jobId}/run`);
    expect(queued.status).toBe(202);
    expect(queued.body.trigger).toBe('manual');
    const done = await api.until<{ run: Run; items: { status: string; snapshotId: string | null; bytesRead: number | null }[] }>(`/runs/${queued.body.id}`, (b) => !['queued', 'running'].includes(b.run.status));
    expect(done.run.status).toBe('success');
    expect(done.items).toHaveLength(1);
    snapshotId = done.items[0]!.snapshotId!;
    expect(done.items[0]!.bytesRead).toBeGreaterThanOrEqual(3 * MiB);
    // Outside witness: the repository itself, read by the CLI.
    const listed = jsonResult<{ id: string; tags: string[] }[]>(await runCli(['--json', 'snapshots'], { env }));
    const sn = listed.find((s) => s.id === snapshotId);
    expect(sn?.tags).toEqual(expect.arrayContaining(['web', 'bulwark-job=docs', `bulwark-run=${queued.body.id}`]));
    const events = await api.call<{ events: { message: string }[] }>('GET', `/runs/${queued.body.id}/events`);
    expect(events.body.events.map((e) => e.message)).toEqual(expect.arrayContaining(['run ended: success']));
  }, 180_000);

  it('notifies by e-mail and webhook as each target asks', async () => {
    const missing = join(tmp.path, 'no-such-folder');
    const job = await api.call<{ id: number }>('POST', '/jobs', { name: 'broken', definition: { kind: 'folder', sources: [missing] } });
    const run = await api.call<Run>('POST', `/jobs/${job.body.id}/run`);
    const done = await api.until<{ run: Run }>(`/runs/${run.body.id}`, (b) => !['queued', 'running'].includes(b.run.status));
    expect(done.run.status).toBe('failure');
    const deadline = Date.now() + 30_000;
    const broken = () => hook.requests.some((r) => r.body.toString().includes('"job":"broken"'));
    while ((smtp.mails.length < 1 || !broken()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    // The mail fires on failure only: one mail, for this run.
    expect(smtp.mails).toHaveLength(1);
    expect(smtp.mails[0]!.headers.get('subject')).toMatch(/broken/);
    expect(smtp.mails[0]!.text).toContain(missing);
    // The webhook fired for the earlier success and for this failure, each signed with the secret.
    const payloads = hook.requests.map((r) => {
      expect(r.headers[SIGNATURE_HEADER.toLowerCase()]).toBe(signBody(r.body, HOOK_SECRET));
      return JSON.parse(r.body.toString()) as { summary: { job: string; status: string; runId: string } };
    });
    // (The every-minute job's successes are sent too, whenever they fall.)
    expect(payloads.filter((p) => p.summary.job !== 'minutely').map((p) => [p.summary.job, p.summary.status])).toEqual([
      ['docs', 'success'],
      ['broken', 'failure'],
    ]);
    const events = await api.call<{ events: { message: string }[] }>('GET', `/runs/${run.body.id}/events`);
    expect(events.body.events.map((e) => e.message)).toEqual(expect.arrayContaining(["notification 'ops mail' sent", "notification 'chat' sent"]));
    await api.call('DELETE', `/jobs/${job.body.id}`);
  }, 120_000);

  it('backs up disk images with pre- and post-commands around the backup', async () => {
    const image = join(tmp.path, 'disk.img');
    execFileSync('sh', ['-c', `head -c ${8 * MiB} /dev/urandom > '${image}' && truncate -s 64M '${image}'`]);
    const marks = join(tmp.path, 'hook-marks');
    const job = await api.call<{ id: number }>('POST', '/jobs', {
      name: 'images',
      definition: { kind: 'disk', sources: [image], options: { keep: { last: 1 }, preCommand: `echo "pre $BULWARK_JOB" >> '${marks}'`, postCommand: `echo "post $BULWARK_RUN_STATUS" >> '${marks}'; echo post done` } },
    });
    expect(job.status).toBe(201);
    let run = await api.call<Run>('POST', `/jobs/${job.body.id}/run`);
    let done = await api.until<{ run: Run; items: { name: string; snapshotId: string | null }[] }>(`/runs/${run.body.id}`, (b) => !['queued', 'running'].includes(b.run.status));
    expect(done.run.status).toBe('success');
    // Twice: the job's retention (keep the last one) leaves one restore point of the image.
    run = await api.call<Run>('POST', `/jobs/${job.body.id}/run`);
    done = await api.until<{ run: Run; items: { name: string; snapshotId: string | null }[] }>(`/runs/${run.body.id}`, (b) => !['queued', 'running'].includes(b.run.status));
    expect(done.run.status).toBe('success');
    expect(done.items).toEqual([expect.objectContaining({ name: image, snapshotId: expect.stringMatching(/^[0-9a-f]{64}$/) })]);
    expect(readFileSync(marks, 'utf8')).toBe('pre images\npost success\n'.repeat(2));
    const events = (await api.call<{ events: { message: string }[] }>('GET', `/runs/${run.body.id}/events`)).body.events.map((e) => e.message);
    expect(events).toEqual(expect.arrayContaining(['post-command: post done', expect.stringMatching(/^retention: bulwark forget --tag bulwark-job=images --keep-last 1/)]));
    const listed = jsonResult<{ id: string; source: string }[]>(await runCli(['--json', 'snapshots'], { env }));
    expect(listed.filter((x) => x.source === 'disk:disk').map((x) => x.id)).toEqual([done.items[0]!.snapshotId]);

    // A failing pre-command fails the run and nothing is backed up.
    await api.call('PUT', `/jobs/${job.body.id}`, { definition: { kind: 'disk', sources: [image], options: { preCommand: 'exit 7' } } });
    const failed = await api.call<Run>('POST', `/jobs/${job.body.id}/run`);
    const after = await api.until<{ run: Run; items: { snapshotId: string | null; error: string | null }[] }>(`/runs/${failed.body.id}`, (b) => !['queued', 'running'].includes(b.run.status));
    expect(after.run.status).toBe('failure');
    expect(after.items[0]!.snapshotId).toBeNull();
    expect(after.items[0]!.error).toContain('pre-command exited 7');
    // (Only this image's restore points: the every-minute job may have added one of its own meanwhile.)
    const images = (list: { source: string }[]) => list.filter((x) => x.source === 'disk:disk').length;
    expect(images(jsonResult<{ source: string }[]>(await runCli(['--json', 'snapshots'], { env })))).toBe(images(listed));
    await api.call('DELETE', `/jobs/${job.body.id}`);
  }, 120_000);

  it('browses the restore point and downloads a file byte for byte', async () => {
    const list = await api.call<{ snapshots: { id: string }[] }>('GET', '/snapshots');
    expect(list.body.snapshots.map((s) => s.id)).toContain(snapshotId);
    let path = '';
    for (const seg of [...data.split('/').filter(Boolean), 'sub dir']) {
      const tree = await api.call<{ entries: { name: string; kind: string }[] }>('GET', `/snapshots/${snapshotId}/tree?path=${encodeURIComponent(path || '/')}`);
      expect(tree.status).toBe(200);
      expect(tree.body.entries.map((e) => e.name)).toContain(seg);
      path += `/${seg}`;
    }
    const res = await fetch(`${serve!.url}/api/v1/snapshots/${snapshotId.slice(0, 12)}/files?path=${encodeURIComponent(`${path}/blob ü.bin`)}`, { headers: { Cookie: api.cookie } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-disposition')).toContain("filename*=UTF-8''blob%20%C3%BC.bin");
    expect(Buffer.from(await res.arrayBuffer()).equals(readFileSync(join(data, 'sub dir', 'blob ü.bin')))).toBe(true);
  });

  it('restores a folder out of the restore point into a new folder, and refuses to overwrite', async () => {
    const target = join(tmp.path, 'restored');
    const sub = `${data}/sub dir`;
    const r = await api.call<{ id: string; status: string }>('POST', '/restores', { snapshot: snapshotId.slice(0, 12), kind: 'files', path: sub, target });
    expect(r.status).toBe(202);
    const done = await api.until<{ status: string; error: string | null }>(`/restores/${r.body.id}`, (b) => b.status !== 'running', 60_000);
    expect(done.status, done.error ?? '').toBe('success');
    const restored = execFileSync('find', [target, '-type', 'f'], { encoding: 'utf8' }).trim().split('\n');
    expect(restored).toHaveLength(1);
    expect(readFileSync(restored[0]!).equals(readFileSync(join(sub, 'blob ü.bin')))).toBe(true);
    // The folder now holds files: a second restore into it is refused, and nothing changes there.
    const again = await api.call('POST', '/restores', { snapshot: snapshotId, kind: 'files', target });
    expect(again.status).toBe(409);
    expect(execFileSync('find', [target, '-type', 'f'], { encoding: 'utf8' }).trim().split('\n')).toEqual(restored);
    expect((await api.call('POST', '/restores', { snapshot: snapshotId, kind: 'files', target: 'relative' })).status).toBe(400);
    expect((await api.call('POST', '/restores', { snapshot: snapshotId, kind: 'files', target: `${tmp.path}/x/../../etc` })).status).toBe(400);
    expect((await api.call('POST', '/restores', { snapshot: snapshotId, kind: 'vm', target: join(tmp.path, 'vm') })).status).toBe(422);
    expect((await api.call('GET', '/restores/nope')).status).toBe(404);
  }, 120_000);

  it('refuses bad requests with the right 4xx and changes nothing', async () => {
    const before = await jobCount();
    expect((await api.call('POST', '/jobs', '{"name": "x", ')).status).toBe(400);
    // Answered from the Content-Length, before the body is read; the server may close the upload.
    const tooBig = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${serve!.url}/api/v1/jobs`, { method: 'POST', headers: { Cookie: api.cookie, 'X-CSRF-Token': api.csrf, 'Content-Type': 'application/json', 'Content-Length': 2 * 1024 * 1024 } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', (err) => setTimeout(() => reject(err), 1000));
      req.end(Buffer.alloc(2 * 1024 * 1024, 0x20));
    });
    expect(tooBig).toBe(413);
    expect((await api.call('POST', '/jobs', { name: 'x', definition: { kind: 'tape', sources: ['/x'] } })).status).toBe(422);
    expect((await api.call('POST', '/jobs', { name: 'x', definition: { kind: 'folder', sources: ['relative/path'] } })).status).toBe(422);
    expect((await api.call('POST', '/jobs', { name: 'docs', definition: { kind: 'folder', sources: ['/srv'] } })).status).toBe(409);
    expect((await api.call('POST', '/jobs', { name: 'badcron', definition: { kind: 'folder', sources: ['/srv'], schedule: { cron: 'every day' } } })).status).toBe(422);
    expect((await api.call('GET', '/jobs/999999')).status).toBe(404);
    expect((await api.call('GET', '/jobs/abc')).status).toBe(404);
    expect((await api.call('POST', '/jobs/999999/run')).status).toBe(404);
    expect((await api.call('GET', '/runs/no-such-run')).status).toBe(404);
    expect((await api.call('GET', `/snapshots/${'0'.repeat(16)}/tree`)).status).toBe(404);
    for (const p of ['/../../etc/passwd', '/tmp/../etc/passwd', 'etc/passwd', '/a/./b', '/a\\..\\b']) {
      expect((await api.call('GET', `/snapshots/${snapshotId}/files?path=${encodeURIComponent(p)}`)).status, p).toBe(400);
    }
    expect((await api.call('GET', `/snapshots/${snapshotId}/files?path=${encodeURIComponent('/no/such/file')}`)).status).toBe(404);
    expect((await api.call('GET', `/snapshots/..%2f..%2fetc/files?path=/passwd`)).status).toBe(400);
    // A form another site could post: the session cookie but no CSRF header.
    const form = await fetch(`${serve!.url}/api/v1/jobs`, { method: 'POST', headers: { Cookie: api.cookie, 'Content-Type': 'application/x-www-form-urlencoded' }, body: 'name=evil&definition=x' });
    expect(form.status).toBe(403);
    const wrongCsrf = await api.call('DELETE', `/jobs/${jobId}`, undefined, { 'X-CSRF-Token': 'forged' });
    expect(wrongCsrf.status).toBe(403);
    expect((await api.call('GET', `/jobs/${jobId}`)).status).toBe(200);
    const badToken = await fetch(`${serve!.url}/api/v1/jobs`, { headers: { Authorization: 'Bearer bwk_AAAAAAAAAAAAAAAA_' + 'A'.repeat(43) } });
    expect(badToken.status).toBe(401);
    expect(await jobCount()).toBe(before);
  });

  it('answers the VM endpoints without a hypervisor with an empty list, and an unreachable VM with a finding', async () => {
    const none = await api.call<{ vms: unknown[]; findings: unknown[] }>('GET', '/vms', undefined, {});
    expect(none).toEqual({ status: 200, body: { vms: [], findings: [] } });
    const job = await api.call<{ id: number }>('POST', '/jobs', { name: 'ghost', definition: { kind: 'vm', sources: ['ghost'], options: { connect: [`qmp:${tmp.path}/no-such.sock,name=ghost`] } } });
    for (const path of ['/vms', '/doctor']) {
      const r = await api.call<{ findings: { severity: string; message: string }[] }>('GET', path);
      expect(r.status, path).toBe(200);
      expect(r.body.findings.some((f) => f.severity === 'error' && f.message.includes('no-such.sock')), JSON.stringify(r.body)).toBe(true);
    }
    await api.call('DELETE', `/jobs/${job.body.id}`);
  });

  it('gives each role what it may do, and only that', async () => {
    const made = await api.call<{ id: number; role: string }>('POST', '/users', { name: 'viewer1', password: 'viewer password 1', role: 'viewer' });
    expect(made.status).toBe(201);
    expect((await api.call('POST', '/users', { name: 'oper1', password: 'operator password 1', role: 'operator' })).status).toBe(201);
    expect((await api.call('POST', '/users', { name: 'oper1', password: 'another password', role: 'viewer' })).status).toBe(409);
    const viewer = new ApiClient(serve!.url, await openApiValidator(serve!.url));
    expect((await viewer.login('viewer1', 'viewer password 1')).status).toBe(200);
    expect((await viewer.call('GET', '/jobs')).status).toBe(200);
    const before = await jobCount();
    expect((await viewer.call('POST', '/jobs', { name: 'v', definition: { kind: 'folder', sources: ['/srv'] } })).status).toBe(403);
    expect((await viewer.call('POST', `/jobs/${jobId}/run`)).status).toBe(403);
    expect((await viewer.call('GET', '/users')).status).toBe(403);
    expect((await viewer.call('PUT', `/users/${made.body.id}`, { role: 'admin' })).status).toBe(403);
    expect(await jobCount()).toBe(before);
    const oper = new ApiClient(serve!.url, await openApiValidator(serve!.url));
    expect((await oper.login('oper1', 'operator password 1')).status).toBe(200);
    expect((await oper.call('DELETE', `/jobs/${jobId}`)).status).toBe(403);
    const run = await oper.call<Run>('POST', `/jobs/${jobId}/run`);
    expect(run.status).toBe(202);
    expect((await api.until<{ run: Run }>(`/runs/${run.body.id}`, (b) => !['queued', 'running'].includes(b.run.status))).run.status).toBe('success');
    // A user's own new password: the old one and the sessions opened with it stop working.
    expect((await viewer.call('PUT', `/users/${made.body.id}`, { password: 'viewer password 2' })).status).toBe(403);
    expect((await viewer.call('PUT', `/users/${made.body.id}`, { password: 'viewer password 2', currentPassword: 'wrong' })).status).toBe(403);
    expect((await viewer.call('PUT', `/users/${made.body.id}`, { password: 'viewer password 2', currentPassword: 'viewer password 1' })).status).toBe(200);
    expect((await viewer.call('GET', '/jobs')).status).toBe(401);
    expect((await new ApiClient(serve!.url).login('viewer1', 'viewer password 1')).status).toBe(401);
    expect((await new ApiClient(serve!.url).login('viewer1', 'viewer password 2')).status).toBe(200);
    const users = await api.call<{ users: { id: number; name: string }[] }>('GET', '/users');
    const admin = users.body.users.find((u) => u.name === 'admin')!;
    expect((await api.call('DELETE', `/users/${admin.id}`)).status).toBe(409);
    expect((await api.call('PUT', `/users/${admin.id}`, { role: 'viewer' })).status).toBe(409);
    expect((await api.call('DELETE', `/users/${made.body.id}`)).status).toBe(204);
    expect((await new ApiClient(serve!.url).login('viewer1', 'viewer password 2')).status).toBe(401);
  }, 120_000);

  it('takes jobs from its jobs file, and a second repository once its password is proven', async () => {
    const jobs = await api.call<{ jobs: { name: string; enabled: boolean; definition: { tags?: string[]; repository: string } }[] }>('GET', '/jobs');
    expect(jobs.body.jobs.find((j) => j.name === 'from-file')).toMatchObject({ enabled: false, definition: { tags: ['file'], repository: env['BULWARK_REPOSITORY'] } });
    const second = join(tmp.path, 'repo2');
    await makeCliRepository(second, 'second password', join(tmp.path, 'state'));
    expect((await api.call('POST', '/repositories', { location: second, password: 'wrong password' })).status).toBe(422);
    expect((await api.call('POST', '/repositories', { location: join(tmp.path, 'nowhere'), password: 'x' })).status).toBe(404);
    expect((await api.call('POST', '/repositories', { location: second, password: 'second password' })).status).toBe(201);
    const job = await api.call<{ id: number }>('POST', '/jobs', { name: 'offsite', definition: { kind: 'folder', sources: [join(data, 'sub dir')], repository: second } });
    const run = await api.call<Run>('POST', `/jobs/${job.body.id}/run`);
    const done = await api.until<{ run: Run; items: { snapshotId: string }[] }>(`/runs/${run.body.id}`, (b) => !['queued', 'running'].includes(b.run.status));
    expect(done.run.status).toBe('success');
    const listed = await api.call<{ snapshots: { id: string }[] }>('GET', `/snapshots?repository=${encodeURIComponent(second)}`);
    expect(listed.body.snapshots.map((x) => x.id)).toEqual([done.items[0]!.snapshotId]);
    const witness = jsonResult<{ id: string }[]>(await runCli(['--json', 'snapshots'], { env: { ...env, BULWARK_REPOSITORY: second, BULWARK_PASSWORD: 'second password' } }));
    expect(witness.map((x) => x.id)).toEqual([done.items[0]!.snapshotId]);
    await api.call('DELETE', `/jobs/${job.body.id}`);
  }, 120_000);

  it('takes API tokens without a session or CSRF token', async () => {
    const t = await api.call<{ token: string }>('POST', '/tokens', { name: 'script' });
    expect(t.status).toBe(201);
    const res = await fetch(`${serve!.url}/api/v1/jobs/${jobId}`, { method: 'PUT', headers: { Authorization: `Bearer ${t.body.token}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ enabled: true }) });
    expect(res.status).toBe(200);
  });

  it('opens the event stream at once', async () => {
    const ac = new AbortController();
    const res = await fetch(`${serve!.url}/api/v1/stream`, { headers: { Cookie: api.cookie }, signal: ac.signal });
    expect(res.headers.get('content-type')).toContain('text/event-stream');
    const first = await res.body!.getReader().read();
    expect(Buffer.from(first.value!).toString()).toContain('event: hello');
    ac.abort();
  });

  it('marks a run cut off by a server crash as interrupted, leaves no backup running, and runs the job again', async () => {
    const big = join(tmp.path, 'big');
    await mkdir(big);
    execFileSync('sh', ['-c', `for i in 1 2 3 4 5 6; do head -c ${64 * MiB} /dev/urandom > '${big}'/f$i; done`]);
    const job = await api.call<{ id: number }>('POST', '/jobs', { name: 'big', definition: { kind: 'folder', sources: [big] } });
    const run = await api.call<Run>('POST', `/jobs/${job.body.id}/run`);
    await api.until<{ run: Run }>(`/runs/${run.body.id}`, (b) => b.run.status === 'running', 60_000);
    await serve!.kill();
    // Outside witness: no process is left running the backup of that run.
    const deadline = Date.now() + 20_000;
    const running = () => processesOfRun(run.body.id);
    while (running().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect(running()).toEqual([]);
    await start();
    const after = await api.call<{ run: Run }>('GET', `/runs/${run.body.id}`);
    expect(after.body.run.status).toBe('interrupted');
    const again = await api.call<Run>('POST', `/jobs/${job.body.id}/run`);
    const done = await api.until<{ run: Run }>(`/runs/${again.body.id}`, (b) => !['queued', 'running'].includes(b.run.status), 240_000);
    expect(done.run.status).toBe('success');
    const check = await runCli(['check'], { env, timeoutMs: 240_000 });
    expect(check.code, check.stderr).toBe(0);
  }, 420_000);

  it('ran the every-minute job twice on its own', async () => {
    const runs = await api.until<{ runs: Run[] }>(`/runs?jobId=${minutely}`, (b) => b.runs.filter((r) => r.status === 'success').length >= 2, 200_000);
    expect(runs.runs.filter((r) => r.status === 'success').every((r) => ['scheduled', 'catch-up'].includes(r.trigger))).toBe(true);
  }, 240_000);

  it('keeps the repository password sealed in the catalog, never in clear', async () => {
    const dir = join(tmp.path, 'server');
    for (const f of readdirSync(dir).filter((f) => f.startsWith('catalog.sqlite'))) {
      expect(readFileSync(join(dir, f)).includes(Buffer.from(TEST_PASSWORD)), f).toBe(false);
    }
    expect(statSync(join(dir, 'secret.key')).mode & 0o077).toBe(0);
  });

  it('serves HTTPS with a certificate it made itself', async () => {
    const dir = join(tmp.path, 'tls-server');
    const tls = await startServe(['--state-dir', dir, '--tls-generate'], env);
    try {
      expect(tls.url).toMatch(/^https:/);
      const body = await new Promise<string>((resolve, reject) => {
        https
          .get(`${tls.url}/api/v1/health`, { ca: readFileSync(join(dir, 'tls-cert.pem')) }, (res) => {
            let text = '';
            res.on('data', (d: Buffer) => (text += d.toString()));
            res.on('end', () => resolve(text));
          })
          .on('error', reject);
      });
      expect(JSON.parse(body)).toMatchObject({ status: 'ok' });
      // The session cookie is Secure over HTTPS.
      const login = await new Promise<string[]>((resolve, reject) => {
        const req = https.request(`${tls.url}/api/v1/login`, { method: 'POST', ca: readFileSync(join(dir, 'tls-cert.pem')), headers: { 'Content-Type': 'application/json' } }, (res) => {
          res.resume();
          resolve(res.headers['set-cookie'] ?? []);
        });
        req.on('error', reject);
        req.end(JSON.stringify({ username: 'admin', password: ADMIN }));
      });
      expect(login.join(';')).toMatch(/Secure/);
    } finally {
      expect(await tls.stop()).toBe(0);
    }
  }, 120_000);

  it('passes its own self-test', async () => {
    const r = await runCli(['serve', '--self-test'], { env: { BULWARK_REPOSITORY: '' } });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/ok {3}web UI/);
    expect(r.stdout).toContain('self-test passed');
  });

  it('rebuilds its history from the repository when the catalog is lost', async () => {
    expect(await serve!.stop()).toBe(0);
    for (const f of readdirSync(join(tmp.path, 'server')).filter((f) => f.startsWith('catalog.sqlite'))) rmSync(join(tmp.path, 'server', f));
    await start();
    const runs = await api.until<{ runs: Run[] }>('/runs?limit=500', (b) => b.runs.some((r) => r.jobName === 'docs'), 60_000);
    const docs = runs.runs.filter((r) => r.jobName === 'docs');
    expect(docs.every((r) => r.trigger === 'rebuilt' && r.status === 'success')).toBe(true);
    const items = await Promise.all(docs.map(async (r) => (await api.call<{ items: { snapshotId: string }[] }>('GET', `/runs/${r.id}`)).body.items));
    expect(items.flat().map((i) => i.snapshotId)).toContain(snapshotId);
  }, 120_000);

  it('stops cleanly on SIGTERM', async () => {
    expect(await serve!.stop()).toBe(0);
    serve = undefined;
  });
});
