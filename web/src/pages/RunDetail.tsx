import { useCallback, useEffect, useRef, useState } from 'react';
import { api, API_BASE, type Progress, type Run, type RunEvent, type RunItem } from '../api';
import { ErrorBanner, Loading, StatusBadge, Table } from '../components';
import { formatBytes, formatDuration, formatTime, runDurationMs, TERMINAL } from '../format';

const POLL_MS = 2000;

export function RunDetail({ id }: { id: string }) {
  const [run, setRun] = useState<Run | null>(null);
  const [items, setItems] = useState<RunItem[]>([]);
  const [events, setEvents] = useState<RunEvent[]>([]);
  const [progress, setProgress] = useState<Progress | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [live, setLive] = useState(false);

  const seen = useRef(new Set<number>());
  const after = useRef(0);
  const terminalPolls = useRef(0);

  const addEvents = useCallback((list: RunEvent[]) => {
    const fresh = list.filter((e) => !seen.current.has(e.id));
    if (fresh.length === 0) return;
    for (const e of fresh) seen.current.add(e.id);
    setEvents((prev) => [...prev, ...fresh].sort((a, b) => a.id - b.id));
  }, []);

  const refresh = useCallback(async () => {
    try {
      const r = await api.run(id);
      setRun(r.run);
      setItems(r.items);
      setError(null);
      if (TERMINAL.has(r.run.status)) terminalPolls.current++;
    } catch (e) {
      setError(e);
    }
    try {
      const ev = await api.runEvents(id, after.current);
      addEvents(ev.events);
      if (typeof ev.next === 'number' && ev.next > after.current) after.current = ev.next;
    } catch {
      // events are best effort; the run fetch reports errors
    }
  }, [id, addEvents]);

  // Initial load plus polling fallback (every 2 s; stops shortly after the run has ended).
  useEffect(() => {
    void refresh();
    const t = window.setInterval(() => {
      if (terminalPolls.current >= 2) return;
      void refresh();
    }, POLL_MS);
    return () => window.clearInterval(t);
  }, [refresh]);

  // Live updates via Server-Sent Events, opened only after mount.
  useEffect(() => {
    if (typeof EventSource === 'undefined') return;
    let es: EventSource | null = null;
    const timer = window.setTimeout(() => {
      try {
        es = new EventSource(`${API_BASE}/stream`, { withCredentials: true });
      } catch {
        return;
      }
      es.onopen = () => setLive(true);
      es.onerror = () => setLive(false);
      es.addEventListener('run', (m) => {
        const r = parse<Run>(m);
        if (r && r.id === id) {
          setRun(r);
          if (TERMINAL.has(r.status)) {
            terminalPolls.current = 0; // make sure the polling fetches final items
            void refresh(); // and show them now, not at the next poll
          }
        }
      });
      es.addEventListener('progress', (m) => {
        const p = parse<Progress>(m);
        if (p && p.runId === id) setProgress(p);
      });
      es.addEventListener('event', (m) => {
        const e = parse<RunEvent & { runId: string }>(m);
        if (e && e.runId === id) addEvents([{ id: e.id, time: e.time, level: e.level, message: e.message }]);
      });
    }, 0);
    return () => {
      window.clearTimeout(timer);
      if (es) es.close();
    };
  }, [id, addEvents, refresh]);

  const reRun = async () => {
    if (!run?.jobId) return;
    try {
      const r = await api.runJob(run.jobId);
      window.location.hash = `#/runs/${encodeURIComponent(r.id)}`;
    } catch (e) {
      setError(e);
    }
  };

  if (!run) {
    return (
      <section>
        <h1>Run {id}</h1>
        <ErrorBanner error={error} />
        {error ? null : <Loading />}
      </section>
    );
  }

  const terminal = TERMINAL.has(run.status);
  const prog = progressText(run, progress, items);

  return (
    <section>
      <div className="page-head">
        <h1>
          Run of{' '}
          {run.jobId !== null ? <a href={`#/jobs/${run.jobId}`}>{run.jobName}</a> : run.jobName}
        </h1>
        <div className="head-actions">
          <span className={`live ${live ? 'on' : ''}`} title="Live updates">
            {live ? 'live' : 'polling'}
          </span>
          {terminal && run.jobId !== null ? (
            <button type="button" onClick={() => void reRun()} data-testid="run-again">
              Run again
            </button>
          ) : null}
        </div>
      </div>
      <ErrorBanner error={error} />
      <div className="card run-summary">
        <dl className="facts">
          <div>
            <dt>Status</dt>
            <dd>
              <span className={`badge badge-${run.status}`} data-testid="run-status">
                {run.status}
              </span>
            </dd>
          </div>
          <div>
            <dt>Progress</dt>
            <dd>
              <span data-testid="run-progress">{prog.text}</span>
              {prog.ratio !== null ? <progress max={1} value={prog.ratio} /> : null}
              {progress && !terminal ? (
                <span className="muted small"> {progress.files} files, {formatDuration(progress.elapsedMs)}</span>
              ) : null}
            </dd>
          </div>
          <div>
            <dt>Trigger</dt>
            <dd>{run.trigger}</dd>
          </div>
          <div>
            <dt>Queued</dt>
            <dd>{formatTime(run.queuedAt)}</dd>
          </div>
          <div>
            <dt>Started</dt>
            <dd>{formatTime(run.startedAt)}</dd>
          </div>
          <div>
            <dt>Ended</dt>
            <dd>{formatTime(run.endedAt)}</dd>
          </div>
          <div>
            <dt>Duration</dt>
            <dd>{formatDuration(runDurationMs(run))}</dd>
          </div>
          <div>
            <dt>Run id</dt>
            <dd className="mono small">{run.id}</dd>
          </div>
        </dl>
      </div>

      <div className="panel">
        <h2>Items</h2>
        <Table headers={['Name', 'Status', 'Consistency', 'Read', 'Stored', 'Duration', 'Snapshot', 'Error']} testId="run-items">
          {items.length === 0 ? (
            <tr>
              <td colSpan={8} className="muted">
                No items yet.
              </td>
            </tr>
          ) : (
            items.map((it) => (
              <tr key={String(it.id)} data-testid={`run-item-${it.name}`} className={it.error ? 'row-bad' : undefined}>
                <td>{it.name}</td>
                <td>
                  <StatusBadge status={it.status} />
                </td>
                <td>{it.consistency ?? '—'}</td>
                <td>{formatBytes(it.bytesRead)}</td>
                <td>{formatBytes(it.bytesStored)}</td>
                <td>{formatDuration(it.durationMs)}</td>
                <td className="mono small">
                  {it.snapshotId ? (
                    <a href={`#/snapshots/${encodeURIComponent(it.snapshotId)}`}>{it.snapshotId.slice(0, 8)}</a>
                  ) : (
                    '—'
                  )}
                </td>
                <td>
                  {it.error ? <div className="err-text">{it.error}</div> : null}
                  {it.hint ? <div className="hint">{it.hint}</div> : null}
                </td>
              </tr>
            ))
          )}
        </Table>
      </div>

      <div className="panel">
        <h2>Event log</h2>
        <ol className="events" data-testid="run-events">
          {events.map((e) => (
            <li key={e.id} className={`ev ev-${e.level}`}>
              <span className="ev-time mono">{formatClock(e.time)}</span>
              <span className={`ev-level lvl-${e.level}`}>{e.level}</span>
              <span className="ev-msg">{e.message}</span>
            </li>
          ))}
        </ol>
        {events.length === 0 ? <p className="muted">No events yet.</p> : null}
      </div>
    </section>
  );
}

function parse<T>(m: MessageEvent): T | null {
  try {
    return JSON.parse(String(m.data)) as T;
  } catch {
    return null;
  }
}

function formatClock(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString();
}

function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function progressText(run: Run, p: Progress | null, items: RunItem[]): { text: string; ratio: number | null } {
  const terminal = TERMINAL.has(run.status);
  if (p && !terminal) {
    if (typeof p.bytesTotal === 'number' && p.bytesTotal > 0) {
      return {
        text: `${formatBytes(p.bytesDone)} of ${formatBytes(p.bytesTotal)}`,
        ratio: Math.min(1, p.bytesDone / p.bytesTotal),
      };
    }
    return { text: formatBytes(p.bytesDone), ratio: null };
  }
  const s = run.summary ?? {};
  const done = num(s['bytesDone']) ?? num(s['bytesRead']);
  const total = num(s['bytesTotal']);
  if (done !== null && total !== null && total > 0) {
    return { text: `${formatBytes(done)} of ${formatBytes(total)}`, ratio: Math.min(1, done / total) };
  }
  if (p && terminal && items.length === 0) {
    return typeof p.bytesTotal === 'number' && p.bytesTotal > 0
      ? { text: `${formatBytes(p.bytesDone)} of ${formatBytes(p.bytesTotal)}`, ratio: Math.min(1, p.bytesDone / p.bytesTotal) }
      : { text: formatBytes(p.bytesDone), ratio: null };
  }
  const read = items.reduce((acc, it) => acc + (it.bytesRead ?? 0), 0);
  const anyRead = items.some((it) => it.bytesRead !== null);
  if (terminal && (anyRead || done !== null)) {
    const d = done ?? read;
    return run.status === 'success' || run.status === 'warning'
      ? { text: `${formatBytes(d)} of ${formatBytes(d)}`, ratio: 1 }
      : { text: formatBytes(d), ratio: null };
  }
  if (p) return { text: formatBytes(p.bytesDone), ratio: null };
  return { text: run.status === 'queued' ? 'waiting to start' : '—', ratio: null };
}
