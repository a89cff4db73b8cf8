// Notifications about backup runs, for `bulwark serve`: each target whose filter matches the run's
// status gets the run's summary, all targets at once, each with its own timeout and retries. The
// result is one entry per target and the promise never rejects: a notification that cannot be sent
// is reported next to the backup, it never fails it.
import { BulwarkError } from '../../util/errors.js';
import { sendEmail } from './email.js';
import type { NotifyOptions, NotifyResult, NotifyTarget, RunStatus, RunSummary } from './types.js';
import { sendWebhook } from './webhook.js';

export type * from './types.js';
export { emailBody, emailSubject, renderEmail, sendEmail, type RenderedEmail } from './email.js';
export { SIGNATURE_HEADER, sendWebhook, signBody, webhookPayload, type WebhookPayload } from './webhook.js';

export function firesOn(target: NotifyTarget, status: RunStatus): boolean {
  return target.on.includes(status);
}

async function one(target: NotifyTarget, summary: RunSummary, options: NotifyOptions): Promise<NotifyResult> {
  if (!firesOn(target, summary.status)) {
    return { target: target.name, kind: target.kind, status: 'skipped', reason: `fires on ${target.on.join(', ') || 'no status'}, the run's status is ${summary.status}` };
  }
  try {
    return target.kind === 'email' ? await sendEmail(target, summary, options) : await sendWebhook(target, summary, options);
  } catch (err) {
    // The senders do not throw; this keeps a bug in one from taking the run, or the other targets, with it.
    // The message is not passed on: a library's error may quote its options, secrets included.
    const error = new BulwarkError('failed', `${target.kind} '${target.name}': internal error (${err instanceof Error ? err.name : typeof err})`);
    options.log?.(error.message);
    return { target: target.name, kind: target.kind, status: 'failed', attempts: 0, error };
  }
}

/** Notifies every target that fires on the run's status; one result per target, in the targets' order. */
export function notify(summary: RunSummary, targets: readonly NotifyTarget[], options: NotifyOptions = {}): Promise<NotifyResult[]> {
  return Promise.all(targets.map((t) => one(t, summary, options)));
}
