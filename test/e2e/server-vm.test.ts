// `bulwark serve` killed in the middle of a VM job (docs/server.md, "What a restart does"). A real
// guest with its agent runs a job scheduled every minute; the server is SIGKILLed while the run is
// under way. Witnesses from outside the server: QEMU's own status and block graph over QMP, the
// guest agent's freeze status, the process table, and the restore point `bulwark snapshots` finds.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QgaClient } from '../../src/protocols/qga/client.js';
import { QmpClient } from '../../src/protocols/qmp/client.js';
import { ensureGuestBuilt, makeDataDisk, startGuest, type RunningGuest } from '../guest/guest.js';
import { ApiClient, openApiValidator, processesOfRun, startServe, type RunJson as Run, type ServeProcess } from '../helpers/bulwark-server.js';
import { jsonResult, runCli } from '../helpers/cli.js';
import { makeCliRepository, tempDir, TEST_PASSWORD } from '../helpers/repo.js';

const ADMIN = 'admin-password-for-vm-tests';


let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let guest: RunningGuest | undefined;
let serve: ServeProcess | undefined;

async function startServer(): Promise<ApiClient> {
  serve = await startServe(['--state-dir', join(tmp.path, 'server')], env);
  const api = new ApiClient(serve.url, await openApiValidator(serve.url));
  expect((await api.login('admin', ADMIN)).status).toBe(200);
  return api;
}

async function guestState(g: RunningGuest): Promise<{ status: string; frozen: string; ourNodes: string[] }> {
  const qmp = await QmpClient.connect(g.qmpSocket, { timeoutMs: 10_000 });
  try {
    const { status } = await qmp.execute<{ status: string }>('query-status');
    const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
    const qga = await QgaClient.connect(g.qgaSocket, { timeoutMs: 10_000 });
    try {
      return { status, frozen: await qga.fsfreezeStatus(), ourNodes: nodes.map((n) => n['node-name']).filter((n) => n.startsWith('bulwark')) };
    } finally {
      await qga.close();
    }
  } finally {
    await qmp.close();
  }
}

async function untilFleecing(g: RunningGuest, timeoutMs: number): Promise<void> {
  const qmp = await QmpClient.connect(g.harnessSocket, { timeoutMs: 10_000 });
  try {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
      if (nodes.some((n) => n['node-name'].startsWith('bulwark'))) return;
      if (Date.now() > deadline) throw new Error(`no bulwark node in QEMU's block graph within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    await qmp.close();
  }
}

beforeAll(async () => {
  tmp = await tempDir('bw-serve-vm-');
  env = { ...(await makeCliRepository(join(tmp.path, 'repo'), TEST_PASSWORD, join(tmp.path, 'state'))), BULWARK_ADMIN_PASSWORD: ADMIN };
  await mkdir(join(tmp.path, 'scratch'));
  const img = await ensureGuestBuilt();
  const disk = join(tmp.path, 'web01.qcow2');
  await makeDataDisk(disk, { sizeMiB: 256, format: 'qcow2', fill: img.sampleDir });
  guest = await startGuest({ dir: join(tmp.path, 'web01'), name: 'web01', disks: [{ path: disk, format: 'qcow2' }], writer: { kibPerSec: 256 } });
}, 600_000);

afterAll(async () => {
  await serve?.stop();
  await guest?.stop();
  await tmp?.cleanup();
});

describe('bulwark serve and a VM job', () => {
  it('marks the run a crash cut off as interrupted, leaves the guest running and thawed, and the next scheduled run succeeds', async () => {
    let api = await startServer();
    // The guest's fsfreeze hook tells its applications to flush: application consistency.
    const connect = `qmp:${guest!.qmpSocket},name=web01,qga=${guest!.qgaSocket},hooks=/usr/bin/bulwark-fsfreeze-hook`;
    // limitRead: at 8 MB/s the copy lasts seconds, so the kill below lands inside it.
    const job = await api.call<{ id: number }>('POST', '/jobs', {
      name: 'web01-minutely',
      definition: { kind: 'vm', sources: ['web01'], schedule: { cron: '* * * * *', timeZone: 'UTC' }, options: { connect: [connect], scratchDir: join(tmp.path, 'scratch'), consistency: 'application', limitRead: '8M' } },
    });
    expect(job.status).toBe(201);

    // The first scheduled run, killed with the server while it runs.
    const first = await api.until<{ runs: Run[] }>(`/runs?jobId=${job.body.id}`, (b) => b.runs.some((r) => r.status === 'running'), 90_000);
    const cut = first.runs.find((r) => r.status === 'running')!;
    // Killed only once QEMU shows the run's fleecing nodes (seen through the harness's own monitor,
    // since the run holds the QMP socket): the crash lands mid-copy, however fast the copy has become.
    await untilFleecing(guest!, 90_000);
    await serve!.kill();

    const deadline = Date.now() + 30_000;
    while (processesOfRun(cut.id).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect(processesOfRun(cut.id)).toEqual([]);
    let state = await guestState(guest!);
    expect(state.status).toBe('running');
    expect(state.frozen).toBe('thawed');

    api = await startServer();
    const after = await api.call<{ run: Run }>('GET', `/runs/${cut.id}`);
    expect(after.body.run.status).toBe('interrupted');
    const events = await api.call<{ events: { message: string }[] }>('GET', `/runs/${cut.id}/events`);
    expect(events.body.events.map((e) => e.message)).toEqual(expect.arrayContaining(['recovery: the VMs were checked after the restart']));
    // The restart's recovery removed whatever the killed run left in QEMU's block graph.
    state = await guestState(guest!);
    expect(state).toEqual({ status: 'running', frozen: 'thawed', ourNodes: [] });

    const next = await api.until<{ runs: Run[] }>(`/runs?jobId=${job.body.id}`, (b) => b.runs.some((r) => r.id !== cut.id && r.status === 'success'), 240_000);
    const ok = next.runs.find((r) => r.id !== cut.id && r.status === 'success')!;
    expect(['scheduled', 'catch-up']).toContain(ok.trigger);
    const detail = await api.call<{ items: { name: string; status: string; consistency: string; snapshotId: string }[] }>('GET', `/runs/${ok.id}`);
    expect(detail.body.items).toEqual([expect.objectContaining({ name: 'web01', status: 'success', consistency: 'application' })]);
    const listed = jsonResult<{ id: string; source: string }[]>(await runCli(['--json', 'snapshots', '--source', 'vm:web01'], { env }));
    expect(listed.map((s) => s.id)).toContain(detail.body.items[0]!.snapshotId);
    expect((await guestState(guest!)).frozen).toBe('thawed');
  }, 600_000);
});
