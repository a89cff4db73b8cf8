// The shapes shared by the notifiers: what a backup run reports, where notifications go, and what
// became of each one. Plain data, so `bulwark serve` can read targets from its configuration file and
// hand a run's summary over as is.
import type { Consistency } from '../../repository/snapshot.js';
import type { Clock } from '../../util/clock.js';
import type { BulwarkError } from '../../util/errors.js';

export type RunStatus = 'success' | 'warning' | 'failure';

/** One thing the run backed up: a VM, a folder, a disk image. */
export interface ItemResult {
  name: string;
  status: RunStatus;
  consistency?: Consistency;
  bytesRead?: number;
  /** New bytes written to the repository (after deduplication and compression). */
  bytesStored?: number;
  durationMs?: number;
  error?: string;
  /** What a person can do about the error. */
  hint?: string;
  warnings?: string[];
}

export interface RunSummary {
  job: string;
  runId: string;
  status: RunStatus;
  /** The host the run ran on: administrators of several hosts read it first. */
  host: string;
  startedAt: Date;
  endedAt: Date;
  items: ItemResult[];
  /** Warnings about the run as a whole, not one item. */
  warnings: string[];
  /** A failure before or beyond any one item, e.g. the repository could not be opened. */
  error?: string;
  hint?: string;
  /** What an item is, for "2 of 3 VMs"; default VM / VMs. */
  itemNoun?: { one: string; many: string };
}

export interface TlsOptions {
  /** PEM file with the certificate authorities to trust instead of the system's. */
  caFile?: string;
  /** Default true. False accepts any certificate: the link is encrypted but not authenticated. */
  rejectUnauthorized?: boolean;
}

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  attempts: number;
  /** The wait before the second attempt; it doubles for each further one (with jitter). */
  baseDelayMs: number;
  maxDelayMs: number;
}

interface TargetBase {
  /** How logs and results name the target; never a URL or an address that may carry credentials. */
  name: string;
  /** The run statuses this target fires on. */
  on: RunStatus[];
  /** Per attempt: connecting, sending and the server's answer. Default 30 s. */
  timeoutMs?: number;
  retry?: Partial<RetryPolicy>;
  tls?: TlsOptions;
}

/** secure: TLS from the first byte (port 465); starttls: plain, then upgraded, required (587); none: plain text. */
export type SmtpSecurity = 'secure' | 'starttls' | 'none';

export interface EmailTarget extends TargetBase {
  kind: 'email';
  host: string;
  /** Default 465 for secure, 587 for starttls, 25 for none. */
  port?: number;
  security: SmtpSecurity;
  user?: string;
  password?: string;
  from: string;
  to: string[];
}

export interface WebhookTarget extends TargetBase {
  kind: 'webhook';
  /** http: or https:; credentials in it (https://user:pass@host/…) are sent as Basic authorization. */
  url: string;
  /** Key of the HMAC-SHA256 over the body, sent as `X-Bulwark-Signature: sha256=<hex>`. */
  secret?: string;
  /** Sent with every request, e.g. an Authorization token; their values are treated as secrets. */
  headers?: Record<string, string>;
}

export type NotifyTarget = EmailTarget | WebhookTarget;

export type NotifyResult =
  | { target: string; kind: NotifyTarget['kind']; status: 'sent'; attempts: number; detail: string }
  | { target: string; kind: NotifyTarget['kind']; status: 'failed'; attempts: number; error: BulwarkError }
  | { target: string; kind: NotifyTarget['kind']; status: 'skipped'; reason: string };

export interface NotifyOptions {
  /** One line per failed attempt and per outcome, secrets removed. */
  log?: (line: string) => void;
  /** Stops waiting and retrying, e.g. when the server shuts down. */
  signal?: AbortSignal;
  /** Stamps webhook payloads. */
  clock?: Clock;
}
