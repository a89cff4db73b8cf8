import { useEffect, useState } from 'react';
import { api, type Repository, type Snapshot } from '../api';
import { GrowthChart, growthPoints } from '../charts';
import { ErrorBanner, Loading, Table } from '../components';
import { formatBytes, formatTime } from '../format';
import { href, navigate } from '../router';

export function Snapshots({ repository }: { repository: string }) {
  const [repos, setRepos] = useState<Repository[] | null>(null);
  const [snaps, setSnaps] = useState<Snapshot[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [filter, setFilter] = useState('');

  useEffect(() => {
    let alive = true;
    api.repositories().then(
      (r) => alive && setRepos(r.repositories),
      (e: unknown) => {
        if (!alive) return;
        setError(e);
        setRepos([]);
      },
    );
    return () => {
      alive = false;
    };
  }, []);

  const selected = repository || repos?.[0]?.name || '';

  useEffect(() => {
    if (repos === null) return;
    let alive = true;
    setSnaps(null);
    api.snapshots(selected).then(
      (r) => {
        if (!alive) return;
        setSnaps(r.snapshots);
        setError(null);
      },
      (e: unknown) => {
        if (!alive) return;
        setError(e);
        setSnaps([]);
      },
    );
    return () => {
      alive = false;
    };
  }, [selected, repos]);

  const f = filter.trim().toLowerCase();
  const shown = (snaps ?? [])
    .filter(
      (s) =>
        !f ||
        s.id.toLowerCase().startsWith(f) ||
        s.source.toLowerCase().includes(f) ||
        s.hostname.toLowerCase().includes(f) ||
        s.tags.some((t) => t.toLowerCase().includes(f)),
    )
    .sort((a, b) => Date.parse(b.time) - Date.parse(a.time));

  return (
    <section>
      <div className="page-head">
        <h1>Snapshots</h1>
      </div>
      <div className="toolbar">
        <label>
          Repository{' '}
          <select
            data-testid="snapshot-repository"
            value={selected}
            onChange={(e) => navigate('/snapshots', { repository: e.target.value })}
          >
            {(repos ?? []).map((r) => (
              <option key={r.name} value={r.name}>
                {r.name}
              </option>
            ))}
          </select>
        </label>
        <input
          type="search"
          placeholder="Filter by id, source, host, tag"
          data-testid="snapshot-filter"
          value={filter}
          onChange={(e) => setFilter(e.target.value)}
        />
      </div>
      <ErrorBanner error={error} />
      {snaps === null ? <Loading /> : null}
      {snaps && snaps.length > 0 ? (
        <div className="panel">
          <h2>Growth</h2>
          <GrowthChart points={growthPoints(snaps)} testId="chart-growth" />
        </div>
      ) : null}
      {snaps && shown.length === 0 ? <p className="muted">No snapshots.</p> : null}
      {shown.length > 0 ? (
        <Table headers={['Id', 'Time', 'Kind', 'Source', 'Host', 'Tags', 'Size', 'New data']}>
          {shown.map((s) => {
            const id8 = s.id.slice(0, 8);
            return (
              <tr key={s.id} data-testid={`snapshot-row-${id8}`}>
                <td className="mono">
                  <a
                    href={href(`/snapshots/${encodeURIComponent(s.id)}`, { repository: selected || undefined })}
                    data-testid={`snapshot-open-${id8}`}
                  >
                    {id8}
                  </a>
                </td>
                <td className="nowrap">{formatTime(s.time)}</td>
                <td>{s.kind}</td>
                <td className="mono small">{s.source}</td>
                <td>{s.hostname}</td>
                <td>{s.tags.join(', ')}</td>
                <td>{formatBytes(s.bytes)}</td>
                <td>{typeof s.bytesNew === 'number' ? formatBytes(s.bytesNew) : '—'}</td>
              </tr>
            );
          })}
        </Table>
      ) : null}
    </section>
  );
}
