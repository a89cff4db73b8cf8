import { useEffect, useState } from 'react';
import { api, type Dashboard as DashboardData, type RepositorySummary, type Run } from '../api';
import { DurationBarChart, GrowthChart, growthPoints, type Point } from '../charts';
import { ErrorBanner, Loading, StatusBadge, Table, useLoad } from '../components';
import { BAD, formatBytes, formatDuration, formatTime, runDurationMs } from '../format';

export function Dashboard() {
  const { data, error, loading, reload } = useLoad(() => api.dashboard(), []);

  // Refresh every 15 s so running jobs move along without a manual reload.
  useEffect(() => {
    const t = window.setInterval(reload, 15000);
    return () => window.clearInterval(t);
  }, [reload]);

  return (
    <section>
      <div className="page-head">
        <h1>Dashboard</h1>
        <button type="button" onClick={reload}>
          Refresh
        </button>
      </div>
      <ErrorBanner error={error} />
      {loading && !data ? <Loading /> : null}
      {data ? <DashboardBody data={data} /> : null}
    </section>
  );
}

function DashboardBody({ data }: { data: DashboardData }) {
  const failing = data.jobs.filter((j) => j.lastRun && (BAD.has(j.lastRun.status) || j.lastRun.status === 'warning'));
  failing.sort((a, b) => rank(a.lastRun!.status) - rank(b.lastRun!.status));
  const jobs = [...data.jobs].sort(
    (a, b) => rank(a.lastRun?.status ?? '') - rank(b.lastRun?.status ?? '') || a.job.name.localeCompare(b.job.name),
  );
  const recent = [...data.recentRuns].sort((a, b) => Date.parse(a.queuedAt) - Date.parse(b.queuedAt));
  const bars = recent
    .filter((r) => r.startedAt)
    .slice(-30)
    .map((r) => ({
      label: r.jobName,
      value: runDurationMs(r) ?? 0,
      status: r.status,
      title: `${r.jobName} — ${r.status} — ${formatDuration(runDurationMs(r))} (${formatTime(r.startedAt)})`,
    }));

  return (
    <>
      <div className="panel attention" data-testid="attention">
        <h2>Needs attention</h2>
        {failing.length === 0 ? (
          <p className="ok-line">All jobs succeeded on their last run.</p>
        ) : (
          <ul className="failures">
            {failing.map(({ job, lastRun }) => (
              <li key={job.id} className={`failure-item sev-${lastRun!.status}`} data-testid={`failure-${job.name}`}>
                <StatusBadge status={lastRun!.status} /> <strong>{job.name}</strong>{' '}
                <span className="muted">{formatTime(lastRun!.endedAt ?? lastRun!.queuedAt)}</span>{' '}
                <a href={`#/runs/${encodeURIComponent(lastRun!.id)}`}>View run</a>
                {summaryError(lastRun!) ? <div className="hint">{summaryError(lastRun!)}</div> : null}
              </li>
            ))}
          </ul>
        )}
      </div>

      <div className="panel">
        <h2>Jobs</h2>
        {jobs.length === 0 ? (
          <p className="muted">
            No jobs yet. <a href="#/jobs/new">Create one</a>.
          </p>
        ) : (
          <Table headers={['Job', 'Kind', 'Last run', 'Finished', 'Next run']}>
            {jobs.map(({ job, lastRun, nextRunAt }) => (
              <tr key={job.id} data-testid={`dash-job-${job.name}`}>
                <td>
                  <a href={`#/jobs/${job.id}`}>{job.name}</a>
                  {job.enabled ? null : <span className="muted"> (disabled)</span>}
                </td>
                <td>{job.definition.kind}</td>
                <td>
                  {lastRun ? (
                    <a href={`#/runs/${encodeURIComponent(lastRun.id)}`}>
                      <StatusBadge status={lastRun.status} />
                    </a>
                  ) : (
                    <span className="muted">never</span>
                  )}
                </td>
                <td>{lastRun ? formatTime(lastRun.endedAt) : '—'}</td>
                <td>{formatTime(nextRunAt)}</td>
              </tr>
            ))}
          </Table>
        )}
      </div>

      <div className="grid2">
        <div className="panel">
          <h2>Run durations</h2>
          <DurationBarChart bars={bars} testId="chart-durations" />
        </div>
        <div className="panel">
          <h2>Repositories</h2>
          {data.repositories.length === 0 ? <p className="muted">No repositories configured.</p> : null}
          {data.repositories.map((r) => (
            <RepositoryCard key={r.name} repo={r} />
          ))}
        </div>
      </div>

      <div className="panel">
        <h2>Recent runs</h2>
        <RunsTable runs={[...data.recentRuns].sort((a, b) => Date.parse(b.queuedAt) - Date.parse(a.queuedAt))} />
      </div>
    </>
  );
}

function RepositoryCard({ repo }: { repo: RepositorySummary }) {
  const [points, setPoints] = useState<Point[] | null>(null);
  useEffect(() => {
    let alive = true;
    api.snapshots(repo.name).then(
      (r) => alive && setPoints(growthPoints(r.snapshots)),
      () => alive && setPoints([]),
    );
    return () => {
      alive = false;
    };
  }, [repo.name]);
  return (
    <div className="repo-card" data-testid={`repo-${repo.name}`}>
      <div>
        <strong>{repo.name}</strong> <span className="muted mono">{repo.location}</span>
      </div>
      {repo.error ? (
        <div className="err-text" data-testid="repo-error">
          {repo.error}
        </div>
      ) : (
        <div className="muted">
          {repo.snapshots ?? '?'} snapshots, {formatBytes(repo.bytes)} stored
        </div>
      )}
      {points === null ? null : points.length > 0 ? (
        <>
          <div className="chart-caption">Growth (cumulative new data per snapshot)</div>
          <GrowthChart points={points} testId={`chart-growth-${repo.name}`} />
        </>
      ) : null}
    </div>
  );
}

export function RunsTable({ runs }: { runs: Run[] }) {
  if (runs.length === 0) return <p className="muted">No runs yet.</p>;
  return (
    <Table headers={['Status', 'Job', 'Trigger', 'Started', 'Duration']}>
      {runs.map((r) => (
        <tr key={r.id} data-testid={`run-row-${r.id}`}>
          <td>
            <a href={`#/runs/${encodeURIComponent(r.id)}`}>
              <StatusBadge status={r.status} />
            </a>
          </td>
          <td>{r.jobName}</td>
          <td>{r.trigger}</td>
          <td>{formatTime(r.startedAt ?? r.queuedAt)}</td>
          <td>{formatDuration(runDurationMs(r))}</td>
        </tr>
      ))}
    </Table>
  );
}

function rank(status: string): number {
  return status === 'failure' ? 0 : status === 'interrupted' ? 1 : status === 'warning' ? 2 : status === 'running' ? 3 : 4;
}

function summaryError(run: Run): string | null {
  const s = run.summary;
  if (!s) return null;
  for (const k of ['error', 'message', 'hint']) {
    const v = s[k];
    if (typeof v === 'string' && v) return v;
  }
  return null;
}
