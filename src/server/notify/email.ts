// Email notifications over SMTP (nodemailer): a plain-text report an administrator reads in any mail
// client, failures and their hints first, because that is what someone opening it at 7 am acts on.
import nodemailer, { type NodemailerError, type SMTPSentMessageInfo } from 'nodemailer';
import { bytes, duration } from '../../cli/format.js';
import type { ErrorCode } from '../../util/errors.js';
import { deliver, isCertificateError, isLoopback, oneLine, readCa, Redactor, refused, TLS_HINT, timeoutOf, type AttemptOutcome } from './delivery.js';
import type { EmailTarget, ItemResult, NotifyOptions, NotifyResult, RunStatus, RunSummary } from './types.js';

export interface RenderedEmail {
  subject: string;
  text: string;
}

const STATUS_WORD: Record<RunStatus, string> = { failure: 'FAILED', warning: 'WARNING', success: 'OK' };
const DEFAULT_PORT = { secure: 465, starttls: 587, none: 25 } as const;

function noun(summary: RunSummary, n: number): string {
  const { one, many } = summary.itemNoun ?? { one: 'VM', many: 'VMs' };
  return n === 1 ? one : many;
}

function count(summary: RunSummary, status: RunStatus): number {
  return summary.items.filter((i) => i.status === status).length;
}

/** "(2 of 3 VMs)": how many items are in the run's status, or what else there is to say in a few words. */
function tally(summary: RunSummary): string {
  const total = summary.items.length;
  const n = count(summary, summary.status);
  if (summary.status === 'success') return `${total} ${noun(summary, total)}`;
  if (n > 0) return `${n} of ${total} ${noun(summary, total)}`;
  if (summary.status === 'failure') return 'the run failed';
  const w = summary.warnings.length;
  return `${w} ${w === 1 ? 'warning' : 'warnings'}`;
}

function headline(summary: RunSummary): string {
  const total = summary.items.length;
  const n = count(summary, summary.status);
  const all = `${total} ${noun(summary, total)}`;
  switch (summary.status) {
    case 'success':
      return `succeeded: ${all} backed up.`;
    case 'warning':
      return n > 0 ? `succeeded with warnings: ${n} of ${all} with warnings.` : `succeeded with warnings: ${all} backed up.`;
    case 'failure':
      return n > 0 ? `FAILED: ${n} of ${all} failed.` : 'FAILED.';
  }
}

export function emailSubject(summary: RunSummary): string {
  return oneLine(`[Bulwark] ${STATUS_WORD[summary.status]} ${summary.job} on ${summary.host} (${tally(summary)})`);
}

function when(d: Date): string {
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

/** Keeps line breaks of multi-line errors but drops escape sequences a terminal or mail client might act on. */
function clean(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\r\n?/g, '\n').replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, '');
}

function indent(text: string, prefix: string, rest = prefix): string {
  return clean(text)
    .split('\n')
    .map((l, i) => (i === 0 ? prefix : rest) + l)
    .join('\n');
}

function figures(item: ItemResult): string {
  const parts: string[] = [];
  if (item.consistency) parts.push(`${item.consistency}-consistent`);
  if (item.bytesRead !== undefined) parts.push(`read ${bytes(item.bytesRead)}`);
  if (item.bytesStored !== undefined) parts.push(`stored ${bytes(item.bytesStored)}`);
  const took = item.durationMs !== undefined ? `in ${duration(item.durationMs)}` : '';
  return [parts.join(', '), took].filter(Boolean).join(' ');
}

function itemBlock(item: ItemResult): string {
  const lines = [`  ${oneLine(item.name)}`];
  if (item.error) lines.push(indent(item.error, '    Error: ', '           '));
  if (item.hint) lines.push(indent(item.hint, '    Hint:  ', '           '));
  for (const w of item.warnings ?? []) lines.push(indent(w, '    - ', '      '));
  const f = figures(item);
  if (f) lines.push(`    ${f}`);
  return lines.join('\n');
}

export function emailBody(summary: RunSummary): string {
  const failed = summary.items.filter((i) => i.status === 'failure');
  const warned = summary.items.filter((i) => i.status === 'warning');
  const ok = summary.items.filter((i) => i.status === 'success');
  const out: string[] = [];

  out.push(`Backup job ${oneLine(summary.job)} on ${oneLine(summary.host)} ${headline(summary)}`);
  out.push('');
  out.push(`Run:      ${oneLine(summary.runId)}`);
  out.push(`Started:  ${when(summary.startedAt)}`);
  out.push(`Ended:    ${when(summary.endedAt)} (${duration(Math.max(0, summary.endedAt.getTime() - summary.startedAt.getTime()))})`);

  if (summary.error) {
    out.push('', 'RUN FAILED', '', indent(summary.error, '  Error: ', '         '));
    if (summary.hint) out.push(indent(summary.hint, '  Hint:  ', '         '));
  }
  if (failed.length > 0) out.push('', `FAILED (${failed.length})`, '', failed.map(itemBlock).join('\n\n'));
  if (warned.length > 0 || summary.warnings.length > 0) {
    out.push('', `WARNINGS (${warned.length + (summary.warnings.length > 0 ? 1 : 0)})`, '');
    const blocks = warned.map(itemBlock);
    if (summary.warnings.length > 0) blocks.push(['  The run:', ...summary.warnings.map((w) => indent(w, '    - ', '      '))].join('\n'));
    out.push(blocks.join('\n\n'));
  }
  if (ok.length > 0) {
    out.push('', `SUCCEEDED (${ok.length})`, '');
    const width = Math.min(24, Math.max(...ok.map((i) => oneLine(i.name).length)));
    for (const i of ok) {
      const f = figures(i);
      out.push(`  ${oneLine(i.name).padEnd(width)}${f ? `  ${f}` : ''}`);
    }
  }
  out.push('', '-- ', `Bulwark on ${oneLine(summary.host)}`, '');
  return out.join('\n');
}

export function renderEmail(summary: RunSummary): RenderedEmail {
  return { subject: emailSubject(summary), text: emailBody(summary) };
}

/** Which failures another attempt may cure: the connection, a timeout, or a 4xx ("try again later") reply. */
function classify(err: NodemailerError, timedOut: boolean): { code: ErrorCode; transient: boolean; hint?: string } {
  const original = err.originalCode ?? err.code;
  if (timedOut || err.code === 'ETIMEDOUT') return { code: 'timeout', transient: true, hint: 'check host, port and security mode; the server did not answer in time' };
  if (isCertificateError(original) || isCertificateError((err.cause as { code?: unknown } | undefined)?.code)) return { code: 'protocol', transient: false, hint: TLS_HINT };
  if (err.code === 'ETLS') return { code: 'protocol', transient: false, hint: 'check the security mode: secure is TLS from the start (port 465), starttls upgrades a plain connection (587)' };
  if (err.responseCode !== undefined) {
    const transient = err.permanent === false || (err.responseCode >= 400 && err.responseCode < 500);
    if (err.code === 'EAUTH') return { code: 'protocol', transient, hint: transient ? undefined : 'check the user and password of the email target' };
    if (err.code === 'EENVELOPE') return { code: 'protocol', transient, hint: transient ? undefined : 'check the from and to addresses; the server refused them' };
    return { code: 'protocol', transient };
  }
  if (err.code === 'EAUTH' || err.code === 'ENOAUTH') return { code: 'protocol', transient: false, hint: 'check the user and password of the email target, and that the server offers AUTH after TLS' };
  if (err.code === 'ECONNECTION' || err.code === 'ESOCKET' || err.code === 'EDNS') {
    return { code: 'io', transient: true, hint: original === 'ECONNREFUSED' ? 'check host and port, and that the SMTP server is running' : undefined };
  }
  return { code: 'failed', transient: false };
}

function reasonOf(err: NodemailerError): string {
  const original = err.originalCode && err.originalCode !== err.code && !err.message.includes(err.originalCode) ? ` (${err.originalCode})` : '';
  return `${oneLine(err.message)}${original}`;
}

/** Sends the run's report to the target's recipients; never throws. */
export async function sendEmail(target: EmailTarget, summary: RunSummary, options: NotifyOptions = {}): Promise<NotifyResult> {
  const port = target.port ?? DEFAULT_PORT[target.security];
  const label = `email '${target.name}' (${target.host}:${port})`;
  const redactor = new Redactor([target.password], [[target.user, target.password]]);
  if (target.to.length === 0) return refused(target, options, redactor.error('usage', `${label}: no recipients`, 'list at least one address in to'));
  if (target.password && target.security === 'none' && !isLoopback(target.host)) {
    return refused(target, options, redactor.error('usage', `${label}: refusing to send the password over a plain-text connection`, 'use security starttls or secure, or a relay on this machine'));
  }
  const { ca, error: caError } = await readCa(target.tls?.caFile, label, redactor);
  if (caError) return refused(target, options, caError);

  const timeoutMs = timeoutOf(target);
  const transport = nodemailer.createTransport({
    host: target.host,
    port,
    secure: target.security === 'secure',
    requireTLS: target.security === 'starttls',
    ignoreTLS: target.security === 'none',
    ...(target.user ? { auth: { user: target.user, pass: target.password ?? '' } } : {}),
    tls: { rejectUnauthorized: target.tls?.rejectUnauthorized ?? true, ...(ca ? { ca } : {}) },
    connectionTimeout: timeoutMs,
    greetingTimeout: timeoutMs,
    socketTimeout: timeoutMs,
    socketCloseTimeout: 0,
    // Its debug log would carry the AUTH exchange; ours goes through the redactor instead.
    logger: false,
    debug: false,
    disableFileAccess: true,
    disableUrlAccess: true,
  });
  const { subject, text } = renderEmail(summary);
  const message = {
    from: target.from,
    to: target.to,
    subject,
    text,
    headers: {
      'X-Bulwark-Run': oneLine(summary.runId),
      'X-Bulwark-Status': summary.status,
      // RFC 3834: keeps vacation responders and ticket systems from answering a machine.
      'Auto-Submitted': 'auto-generated',
    },
  };

  const attempt = async (): Promise<AttemptOutcome> => {
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal = options.signal ? AbortSignal.any([timeout, options.signal]) : timeout;
    try {
      const info: SMTPSentMessageInfo = await transport.sendMail({ ...message, signal });
      const rejected = (info.rejected ?? []).map(String);
      const accepted = (info.accepted ?? []).map(String);
      return { ok: true, detail: `accepted for ${accepted.join(', ') || 'no one'}${rejected.length > 0 ? `; rejected ${rejected.join(', ')}` : ''}` };
    } catch (err) {
      const e = err as NodemailerError;
      if (options.signal?.aborted) return { ok: false, transient: false, error: redactor.error('failed', `${label}: cancelled`) };
      const timedOut = timeout.aborted;
      const { code, transient, hint } = classify(e, timedOut);
      const reason = timedOut ? `no answer within ${timeoutMs} ms` : reasonOf(e);
      return { ok: false, transient, error: redactor.error(code, `${label}: ${reason}`, hint) };
    }
  };
  try {
    return await deliver(target, label, redactor, options, attempt);
  } finally {
    transport.close();
  }
}
