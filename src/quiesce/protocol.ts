// The consistency protocol (docs/architecture.md, "The VM path"), VSS's requestor/writer roles made explicit:
//   prepare: a guardian per VM, the agent pinged, fsfreeze hooks looked for (application vs
//            filesystem consistency); what cannot quiesce is decided here under the policy
//   freeze:  every VM that can, in order
//   snapshot: the caller's callback, once, while all are frozen: one point in time for a group
//   thaw:    always, in finally; the guardians thaw on their own if this process dies
import { BulwarkError } from '../util/errors.js';
import { Guardian } from './guardian.js';

export type ConsistencyPolicy = 'application' | 'auto' | 'crash';
export type Consistency = 'application' | 'filesystem' | 'crash';

export interface QuiesceTarget {
  name: string;
  qgaSocket?: string;
  /** Paths in the guest whose presence means fsfreeze hooks notify applications. */
  hookPaths?: string[];
}

export interface QuiesceOutcome {
  name: string;
  consistency: Consistency;
  freezeMs: number;
  /** Wall-clock ms when the freeze began and the thaw completed: a group's windows all overlap. */
  frozenFrom?: number;
  frozenTo?: number;
  warnings: string[];
  error?: BulwarkError;
}

export const DEFAULT_HOOK_PATHS = ['/etc/qemu/fsfreeze-hook'];

interface State {
  target: QuiesceTarget;
  outcome: QuiesceOutcome;
  guardian?: Guardian;
  expected: Consistency;
  frozenAt?: number;
}

function cannot(s: State, policy: ConsistencyPolicy, why: string): void {
  if (policy === 'application') {
    s.outcome.error = new BulwarkError('failed', `VM ${s.target.name} cannot be backed up application-consistent: ${why}`, {
      hint: 'start qemu-guest-agent in the guest (and pass qga=<socket>), or use --consistency auto to fall back to crash consistency',
    });
  } else {
    s.outcome.warnings.push(`crash-consistent only: ${why}`);
  }
  s.expected = 'crash';
}

export async function quiesceAndSnapshot(
  targets: QuiesceTarget[],
  policy: ConsistencyPolicy,
  snapshot: () => Promise<void>,
  opts: { deadlineMs?: number; callTimeoutMs?: number } = {},
): Promise<QuiesceOutcome[]> {
  const states: State[] = targets.map((target) => ({ target, outcome: { name: target.name, consistency: 'crash', freezeMs: 0, warnings: [] }, expected: 'crash' }));
  try {
    // prepare
    for (const s of states) {
      if (policy === 'crash') continue;
      if (!s.target.qgaSocket) {
        cannot(s, policy, 'no guest agent configured');
        continue;
      }
      const g = Guardian.start(s.target.qgaSocket, { deadlineMs: opts.deadlineMs ?? 10_000, callTimeoutMs: opts.callTimeoutMs ?? 5_000 });
      s.guardian = g;
      try {
        const info = await g.info();
        const can = (c: string): boolean => info.supported_commands.some((x) => x.name === c && x.enabled);
        if (!can('guest-fsfreeze-freeze')) {
          cannot(s, policy, `guest agent ${info.version} does not allow fsfreeze`);
          continue;
        }
        let hooks = false;
        for (const p of s.target.hookPaths ?? DEFAULT_HOOK_PATHS) if (await g.exists(p)) hooks = true;
        s.expected = hooks ? 'application' : 'filesystem';
        if (!hooks && policy === 'application') s.outcome.warnings.push('no fsfreeze hook found in the guest: file systems are frozen, applications are not told');
      } catch (err) {
        cannot(s, policy, `guest agent does not answer (${(err as Error).message})`);
      }
    }
    // freeze
    for (const s of states) {
      if (s.expected === 'crash' || !s.guardian) continue;
      s.frozenAt = performance.now();
      s.outcome.frozenFrom = Date.now();
      try {
        await s.guardian.freeze();
        s.outcome.consistency = s.expected;
      } catch (err) {
        s.outcome.consistency = 'crash';
        cannot(s, policy, `freeze failed (${(err as Error).message})`);
      }
    }
    // snapshot, then thaw whatever happens
    try {
      await snapshot();
    } finally {
      for (const s of states) {
        if (s.frozenAt === undefined || !s.guardian) continue;
        try {
          await s.guardian.thaw();
        } catch (err) {
          s.outcome.warnings.push(`thaw failed (${(err as Error).message}); the guardian retries`);
        }
        s.outcome.freezeMs = Math.round((performance.now() - s.frozenAt) * 10) / 10;
        s.outcome.frozenTo = Date.now();
      }
    }
    return states.map((s) => s.outcome);
  } finally {
    // Closing a guardian thaws the guest if it is still frozen, then it exits.
    await Promise.all(states.map((s) => s.guardian?.close()));
  }
}
