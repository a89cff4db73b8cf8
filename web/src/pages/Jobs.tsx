import { useState } from 'react';
import { api, type Job } from '../api';
import { ErrorBanner, Loading, Table, useLoad } from '../components';
import { formatTime } from '../format';
import { navigate } from '../router';

export function Jobs() {
  const { data, error, loading } = useLoad(() => api.jobs(), []);
  const [actionError, setActionError] = useState<unknown>(null);
  const [busy, setBusy] = useState<number | null>(null);

  const run = async (job: Job) => {
    setBusy(job.id);
    setActionError(null);
    try {
      const r = await api.runJob(job.id);
      navigate(`/runs/${encodeURIComponent(r.id)}`);
    } catch (e) {
      setActionError(e);
      setBusy(null);
    }
  };

  const jobs = data ? [...data.jobs].sort((a, b) => a.name.localeCompare(b.name)) : [];

  return (
    <section>
      <div className="page-head">
        <h1>Jobs</h1>
        <a className="button primary" href="#/jobs/new" data-testid="job-new">
          New job
        </a>
      </div>
      <ErrorBanner error={error} />
      <ErrorBanner error={actionError} />
      {loading && !data ? <Loading /> : null}
      {data && jobs.length === 0 ? <p className="muted">No jobs yet.</p> : null}
      {jobs.length > 0 ? (
        <Table headers={['Name', 'Kind', 'Sources', 'Repository', 'Schedule', 'Next run', 'Actions']}>
          {jobs.map((job) => (
            <tr key={job.id} data-testid={`job-row-${job.name}`}>
              <td>
                <strong>{job.name}</strong>
                {job.enabled ? null : <span className="muted"> (disabled)</span>}
              </td>
              <td>{job.definition.kind}</td>
              <td className="mono small">{job.definition.sources.join(', ')}</td>
              <td>{job.definition.repository ?? <span className="muted">default</span>}</td>
              <td className="mono small">
                {job.definition.schedule
                  ? `${job.definition.schedule.cron}${job.definition.schedule.timeZone ? ` (${job.definition.schedule.timeZone})` : ''}`
                  : <span className="muted">manual</span>}
              </td>
              <td>{formatTime(job.nextRunAt)}</td>
              <td className="actions">
                <button
                  type="button"
                  className="primary"
                  data-testid={`job-run-${job.name}`}
                  disabled={busy !== null}
                  onClick={() => void run(job)}
                >
                  {busy === job.id ? 'Starting…' : 'Run now'}
                </button>
                <button type="button" data-testid={`job-edit-${job.name}`} onClick={() => navigate(`/jobs/${job.id}`)}>
                  Edit
                </button>
              </td>
            </tr>
          ))}
        </Table>
      ) : null}
    </section>
  );
}
