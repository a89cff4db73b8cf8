// The consistency protocol (docs/architecture.md, "The VM path"), VSS's requestor/writer roles made explicit:
//   prepare: each VM's agent (held by the VM session's guardian) asked what it can do, fsfreeze hooks
//            looked for (application vs filesystem consistency); what cannot quiesce is decided
//            here under the policy
//   freeze:  every VM that can, in order
//   snapshot: the caller's callback, once, while all are frozen: one point in time for a group
//   thaw:    always, in finally; the guardians thaw on their own if this process dies
import type { GuestAgent } from '../hypervisors/session.js';
import { BulwarkError } from '../util/errors.js';

export type ConsistencyPolicy = 'application' | 'auto' | 'crash';
export type Consistency = 'application' | 'filesystem' | 'crash';

export interface QuiesceTarget {
  name: string;
  /** The guest agent, through the guardian that thaws by itself if this process dies. */
  agent?: GuestAgent;
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
  expected: Consistency;
  frozenAt?: number;
}

function cannot(s: State, policy: ConsistencyPolicy, why: string): void {
  if (policy === 'application') {
    s.outcome.error = new BulwarkError('failed', `VM ${s.target.name} cannot be backed up application-consistent: ${why}`, {
      hint: 'start qemu-guest-agent in the guest (its socket is found through the VM\'s org.qemu.guest_agent.0 port, or pass qga=<socket>), or use --consistency auto to fall back to crash consistency',
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
): Promise<QuiesceOutcome[]> {
  const states: State[] = targets.map((target) => ({ target, outcome: { name: target.name, consistency: 'crash', freezeMs: 0, warnings: [] }, expected: 'crash' }));
  // prepare
  for (const s of states) {
    if (policy === 'crash') continue;
    const agent = s.target.agent;
    if (!agent) {
      cannot(s, policy, 'no guest agent configured or found');
      continue;
    }
    try {
      const info = await agent.info();
      if (!info.canFreeze) {
        cannot(s, policy, `guest agent ${info.version} does not allow fsfreeze`);
        continue;
      }
      let hooks = false;
      for (const p of s.target.hookPaths ?? DEFAULT_HOOK_PATHS) if (await agent.exists(p)) hooks = true;
      s.expected = hooks ? 'application' : 'filesystem';
      if (!hooks && policy === 'application') s.outcome.warnings.push('no fsfreeze hook found in the guest: file systems are frozen, applications are not told');
    } catch (err) {
      cannot(s, policy, `guest agent does not answer (${(err as Error).message})`);
    }
  }
  // freeze
  for (const s of states) {
    if (s.expected === 'crash' || !s.target.agent) continue;
    s.frozenAt = performance.now();
    s.outcome.frozenFrom = Date.now();
    try {
      await s.target.agent.freeze();
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
      if (s.frozenAt === undefined || !s.target.agent) continue;
      try {
        await s.target.agent.thaw();
      } catch (err) {
        s.outcome.warnings.push(`thaw failed (${(err as Error).message}); the guardian retries`);
      }
      s.outcome.freezeMs = Math.round((performance.now() - s.frozenAt) * 10) / 10;
      s.outcome.frozenTo = Date.now();
    }
  }
  return states.map((s) => s.outcome);
}
