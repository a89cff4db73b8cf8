import { api, fileDownloadUrl } from '../api';
import { ErrorBanner, Loading, Table, useLoad } from '../components';
import { formatBytes, formatTime } from '../format';
import { href, navigate } from '../router';

function join(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

export function SnapshotBrowser({ id, repository, path }: { id: string; repository: string; path: string }) {
  const { data, error, loading } = useLoad(() => api.tree(id, path, repository), [id, path, repository]);
  const go = (p: string) => navigate(`/snapshots/${encodeURIComponent(id)}`, { repository: repository || undefined, path: p });
  const link = (p: string) => href(`/snapshots/${encodeURIComponent(id)}`, { repository: repository || undefined, path: p });

  const parts = path.split('/').filter(Boolean);
  const entries = data
    ? [...data.entries].sort((a, b) => Number(b.kind === 'dir') - Number(a.kind === 'dir') || a.name.localeCompare(b.name))
    : [];

  return (
    <section>
      <div className="page-head">
        <h1>
          Snapshot <span className="mono">{id.slice(0, 8)}</span>
        </h1>
        <div className="form-actions">
          <a className="button" data-testid="restore-files" href={href('/restore', { snapshot: id, repository: repository || undefined, path, kind: 'files' })}>
            Restore {path === '/' ? 'all' : 'this folder'}…
          </a>
          <a className="button" data-testid="restore-vm" href={href('/restore', { snapshot: id, repository: repository || undefined, kind: 'vm' })}>
            Restore VM disks…
          </a>
          <a href={href('/snapshots', { repository: repository || undefined })}>Back to snapshots</a>
        </div>
      </div>
      <nav className="crumbs" aria-label="Path" data-testid="breadcrumbs">
        <a href={link('/')}>(root)</a>
        {parts.map((p, i) => {
          const to = '/' + parts.slice(0, i + 1).join('/');
          return (
            <span key={to}>
              {' / '}
              <a href={link(to)}>{p}</a>
            </span>
          );
        })}
      </nav>
      <ErrorBanner error={error} />
      {loading && !data ? <Loading /> : null}
      {data ? (
        <Table headers={['Name', 'Size', 'Modified', '']} className="browser">
          {path !== '/' ? (
            <tr className="clickable" onClick={() => go('/' + parts.slice(0, -1).join('/'))} data-testid="entry-up">
              <td colSpan={4}>
                <a href={link('/' + parts.slice(0, -1).join('/'))}>.. (up)</a>
              </td>
            </tr>
          ) : null}
          {entries.length === 0 ? (
            <tr>
              <td colSpan={4} className="muted">
                Empty folder.
              </td>
            </tr>
          ) : null}
          {entries.map((e) => {
            const full = join(path, e.name);
            const isDir = e.kind === 'dir';
            return (
              <tr
                key={e.name}
                data-testid={`entry-${e.name}`}
                className={isDir ? 'clickable' : undefined}
                onClick={isDir ? () => go(full) : undefined}
              >
                <td>
                  <span className={`icon icon-${e.kind}`} aria-hidden="true">
                    {isDir ? '▸' : e.kind === 'symlink' ? '↪' : '·'}
                  </span>{' '}
                  {isDir ? (
                    <a href={link(full)} onClick={(ev) => ev.stopPropagation()}>
                      {e.name}/
                    </a>
                  ) : (
                    e.name
                  )}
                </td>
                <td>{isDir ? '' : formatBytes(e.size)}</td>
                <td>{formatTime(e.mtime)}</td>
                <td>
                  {e.kind === 'file' ? (
                    <a href={fileDownloadUrl(id, full, repository)} download={e.name} data-testid={`download-${e.name}`}>
                      Download
                    </a>
                  ) : null}
                </td>
              </tr>
            );
          })}
        </Table>
      ) : null}
    </section>
  );
}
