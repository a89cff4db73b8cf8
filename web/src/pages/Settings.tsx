import { api, type User } from '../api';
import { ErrorBanner, Loading, Table, useLoad } from '../components';

export function Settings({ user }: { user: User }) {
  const health = useLoad(() => api.health(), []);
  const repos = useLoad(() => api.repositories(), []);
  return (
    <section>
      <h1>Settings</h1>
      <div className="panel">
        <h2>Account</h2>
        <dl className="facts">
          <div>
            <dt>User</dt>
            <dd data-testid="settings-user">{user.name}</dd>
          </div>
          <div>
            <dt>Role</dt>
            <dd data-testid="settings-role">{user.role}</dd>
          </div>
        </dl>
      </div>
      <div className="panel">
        <h2>Server</h2>
        <ErrorBanner error={health.error} />
        {health.loading && !health.data ? <Loading /> : null}
        {health.data ? (
          <dl className="facts">
            <div>
              <dt>Version</dt>
              <dd data-testid="settings-version">{health.data.version}</dd>
            </div>
            <div>
              <dt>Status</dt>
              <dd>{health.data.status}</dd>
            </div>
          </dl>
        ) : null}
      </div>
      <div className="panel">
        <h2>Repositories</h2>
        <ErrorBanner error={repos.error} />
        {repos.loading && !repos.data ? <Loading /> : null}
        {repos.data ? (
          repos.data.repositories.length === 0 ? (
            <p className="muted">No repositories configured.</p>
          ) : (
            <Table headers={['Name', 'Location']} testId="settings-repositories">
              {repos.data.repositories.map((r) => (
                <tr key={r.name}>
                  <td>{r.name}</td>
                  <td className="mono small">{r.location}</td>
                </tr>
              ))}
            </Table>
          )
        ) : null}
      </div>
    </section>
  );
}
