// The web UI in a real browser (Debian's Chromium through playwright-core), against `bulwark serve`
// and a real guest: log in, create a job for the guest, run it, watch its progress to the end, browse
// the restore point into the guest's disk, download a file and compare it with the original. Every
// page is photographed at desktop and phone width into test-artifacts/web-ui/.
import { execFileSync } from 'node:child_process';
import { lstatSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureGuestBuilt, makeDataDisk, startGuest, type RunningGuest } from '../guest/guest.js';
import { ARTIFACTS, launchChromium } from '../helpers/browser.js';
import { startServe, type ServeProcess } from '../helpers/bulwark-server.js';
import { makeCliRepository, tempDir, TEST_PASSWORD } from '../helpers/repo.js';

const ADMIN = 'admin-password-for-the-browser';
const SHOTS = join(ARTIFACTS, 'web-ui');

let tmp: { path: string; cleanup(): Promise<void> };
let guest: RunningGuest | undefined;
let serve: ServeProcess | undefined;
let browser: Browser | undefined;
let sample: { name: string; bytes: Buffer };
/** Requests the page made to any host but the server: there must be none. */
const outside: string[] = [];

beforeAll(async () => {
  tmp = await tempDir('bw-web-');
  await mkdir(SHOTS, { recursive: true });
  const env = { ...(await makeCliRepository(join(tmp.path, 'repo'), TEST_PASSWORD, join(tmp.path, 'state'))), BULWARK_ADMIN_PASSWORD: ADMIN };
  const img = await ensureGuestBuilt();
  const name = readdirSync(img.sampleDir).filter((f) => lstatSync(join(img.sampleDir, f)).isFile()).sort()[0]!;
  sample = { name, bytes: readFileSync(join(img.sampleDir, name)) };
  const disk = join(tmp.path, 'web02.qcow2');
  await makeDataDisk(disk, { sizeMiB: 128, format: 'qcow2', fill: img.sampleDir });
  guest = await startGuest({ dir: join(tmp.path, 'web02'), name: 'web02', disks: [{ path: disk, format: 'qcow2' }] });
  serve = await startServe(['--state-dir', join(tmp.path, 'server')], env);
  browser = await launchChromium();
}, 600_000);

afterAll(async () => {
  await browser?.close();
  await serve?.stop();
  await guest?.stop();
  await tmp?.cleanup();
});

async function shoot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  const size = page.viewportSize()!;
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(SHOTS, `${name}-phone.png`), fullPage: true });
  // At phone width nothing may stick out sideways but what scrolls inside its own box.
  // The function runs in the page; this file is compiled without the DOM's types.
  const overflow = await page.evaluate<number>('document.documentElement.scrollWidth - document.documentElement.clientWidth');
  expect(overflow, `${name} is wider than a phone`).toBeLessThanOrEqual(1);
  await page.setViewportSize(size);
}

describe('web UI', () => {
  it('logs in, creates and runs a job for the guest, follows it, browses the restore point and downloads a file', async () => {
    const context = await browser!.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const origin = new URL(serve!.url).origin;
    page.on('request', (r) => {
      if (!r.url().startsWith(origin) && !r.url().startsWith('data:')) outside.push(r.url());
    });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));

    await page.goto(serve!.url, { waitUntil: 'load' });
    await page.getByTestId('login-username').waitFor();
    await shoot(page, 'login');
    await page.getByTestId('login-username').fill('admin');
    await page.getByTestId('login-password').fill('not the password');
    await page.getByTestId('login-submit').click();
    await page.getByTestId('error').waitFor();
    await page.getByTestId('login-password').fill(ADMIN);
    await page.getByTestId('login-submit').click();
    await page.getByTestId('nav-jobs').waitFor();
    await shoot(page, 'dashboard');

    await page.getByTestId('nav-jobs').click();
    await page.getByTestId('job-new').click();
    await page.getByTestId('job-name').fill('web02-nightly');
    await page.getByTestId('job-kind').selectOption('vm');
    await page.getByTestId('job-sources').fill('web02');
    await page.getByTestId('job-connect').fill(`qmp:${guest!.qmpSocket},name=web02,qga=${guest!.qgaSocket},hooks=/usr/bin/bulwark-fsfreeze-hook`);
    await page.getByTestId('job-cron').fill('30 2 * * *');
    await page.getByTestId('job-timezone').fill('UTC');
    await shoot(page, 'job-edit');
    await page.getByTestId('job-save').click();
    await page.getByTestId('job-row-web02-nightly').waitFor();
    await shoot(page, 'jobs');

    await page.getByTestId('job-run-web02-nightly').click();
    await page.getByTestId('run-status').waitFor();
    // The page rendered while its event stream stays open: live updates must never hold the first render.
    const seen = new Set<string>();
    const deadline = Date.now() + 300_000;
    let status = '';
    while (Date.now() < deadline) {
      status = (await page.getByTestId('run-status').textContent())?.trim() ?? '';
      seen.add(status);
      const progress = (await page.getByTestId('run-progress').textContent().catch(() => '')) ?? '';
      if (/\d/.test(progress)) seen.add('progress shown');
      if (!['queued', 'running'].includes(status)) break;
      await page.waitForTimeout(200);
    }
    await shoot(page, 'run-detail');
    expect(status).toBe('success');
    expect(seen.has('running')).toBe(true);
    await expect.poll(async () => (await page.getByTestId('run-events').textContent()) ?? '').toContain('run ended: success');
    await expect.poll(async () => (await page.getByTestId('run-items').textContent()) ?? '', { timeout: 15_000 }).toContain('application');

    await page.getByTestId('nav-snapshots').click();
    const row = page.locator('[data-testid^="snapshot-open-"]').first();
    await row.waitFor();
    await shoot(page, 'snapshots');
    await row.click();
    await page.getByTestId('entry-vda').click();
    await page.getByTestId('entry-fs').click();
    await page.getByTestId(`download-${sample.name}`).waitFor();
    await shoot(page, 'snapshot-browser');
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId(`download-${sample.name}`).click()]);
    const saved = join(tmp.path, 'downloaded');
    await download.saveAs(saved);
    expect(readFileSync(saved).equals(sample.bytes)).toBe(true);

    // The restore wizard: the folder the browser shows, restored into a new folder on the host.
    await page.getByTestId('restore-files').click();
    const target = join(tmp.path, 'restored');
    await page.getByTestId('restore-target').fill(target);
    await shoot(page, 'restore-wizard');
    await page.getByTestId('restore-start').click();
    await expect.poll(async () => (await page.getByTestId('restore-status').textContent()) ?? '', { timeout: 120_000 }).toMatch(/success|failure/);
    await shoot(page, 'restore-status');
    expect(await page.getByTestId('restore-status').textContent()).toBe('success');
    const found = execFileSync('find', [target, '-name', sample.name, '-type', 'f'], { encoding: 'utf8' }).trim();
    expect(readFileSync(found).equals(sample.bytes)).toBe(true);

    // The doctor asks the guest through QEMU and its agent: slow on a busy host, so its answer is awaited.
    await page.getByTestId('nav-doctor').click();
    await expect.poll(async () => page.getByText('Loading…').count(), { timeout: 120_000 }).toBe(0);
    // The job's guest, found through its connect target, with what doctor says of it.
    await page.getByTestId('vm-row-web02').waitFor();
    expect(errors).toEqual([]);
    await shoot(page, 'doctor');
    for (const [nav, shot] of [['nav-settings', 'settings'], ['nav-dashboard', 'dashboard-after']] as const) {
      await page.getByTestId(nav).click();
      await page.waitForLoadState('load');
      await shoot(page, shot);
    }
    await page.getByTestId('logout').click();
    await page.getByTestId('login-username').waitFor();
    expect(errors).toEqual([]);
    expect(outside).toEqual([]);
    await context.close();
  }, 600_000);
});
