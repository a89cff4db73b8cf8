import { useCallback, useEffect, useState } from 'react';
import { api, onUnauthorized, setCsrfToken, type Session, type User } from './api';
import { ErrorBanner, Loading } from './components';
import { useRoute, type Route } from './router';
import { Dashboard } from './pages/Dashboard';
import { Jobs } from './pages/Jobs';
import { JobEdit } from './pages/JobEdit';
import { RunDetail } from './pages/RunDetail';
import { Snapshots } from './pages/Snapshots';
import { SnapshotBrowser } from './pages/SnapshotBrowser';
import { Doctor } from './pages/Doctor';
import { RestoreStatus, RestoreWizard } from './pages/Restore';
import { Settings } from './pages/Settings';
import { Login } from './pages/Login';

type AuthState = { state: 'checking' } | { state: 'anonymous'; error?: unknown } | { state: 'signed-in'; user: User };

const NAV: { id: string; label: string; href: string; pages: Route['page'][] }[] = [
  { id: 'dashboard', label: 'Dashboard', href: '#/', pages: ['dashboard', 'run'] },
  { id: 'jobs', label: 'Jobs', href: '#/jobs', pages: ['jobs', 'job-edit'] },
  { id: 'snapshots', label: 'Snapshots', href: '#/snapshots', pages: ['snapshots', 'snapshot', 'restore', 'restore-status'] },
  { id: 'doctor', label: 'Doctor', href: '#/doctor', pages: ['doctor'] },
  { id: 'settings', label: 'Settings', href: '#/settings', pages: ['settings'] },
];

export function App() {
  const [auth, setAuth] = useState<AuthState>({ state: 'checking' });
  const route = useRoute();

  const signedIn = useCallback((s: Session) => {
    setCsrfToken(s.csrfToken ?? null);
    setAuth({ state: 'signed-in', user: s.user });
  }, []);

  useEffect(() => {
    onUnauthorized(() => {
      setCsrfToken(null);
      setAuth({ state: 'anonymous' });
    });
    let alive = true;
    api.me().then(
      (s) => alive && signedIn(s),
      (e: unknown) => {
        if (!alive) return;
        const status = (e as { status?: number }).status;
        setAuth(status === 401 ? { state: 'anonymous' } : { state: 'anonymous', error: e });
      },
    );
    return () => {
      alive = false;
      onUnauthorized(null);
    };
  }, [signedIn]);

  const logout = async () => {
    try {
      await api.logout();
    } catch {
      // signed out locally either way
    }
    setCsrfToken(null);
    setAuth({ state: 'anonymous' });
  };

  if (auth.state === 'checking') {
    return (
      <main className="page">
        <Loading />
      </main>
    );
  }
  if (auth.state === 'anonymous') {
    return (
      <>
        {auth.error ? (
          <div className="page">
            <ErrorBanner error={auth.error} />
          </div>
        ) : null}
        <Login onLogin={signedIn} />
      </>
    );
  }

  return (
    <div className="app">
      <header className="topbar">
        <a className="brand" href="#/">
          Bulwark
        </a>
        <nav className="nav" aria-label="Main">
          {NAV.map((n) => (
            <a
              key={n.id}
              href={n.href}
              data-testid={`nav-${n.id}`}
              className={n.pages.includes(route.page) ? 'active' : undefined}
            >
              {n.label}
            </a>
          ))}
        </nav>
        <div className="who">
          <span className="muted">
            {auth.user.name} ({auth.user.role})
          </span>
          <button type="button" className="link-button" data-testid="logout" onClick={() => void logout()}>
            Log out
          </button>
        </div>
      </header>
      <main className="page">
        <Page route={route} user={auth.user} />
      </main>
    </div>
  );
}

function Page({ route, user }: { route: Route; user: User }) {
  switch (route.page) {
    case 'dashboard':
      return <Dashboard />;
    case 'jobs':
      return <Jobs />;
    case 'job-edit':
      return <JobEdit key={route.id ?? 'new'} id={route.id} />;
    case 'run':
      return <RunDetail key={route.id} id={route.id} />;
    case 'snapshots':
      return <Snapshots repository={route.repository} />;
    case 'snapshot':
      return <SnapshotBrowser id={route.id} repository={route.repository} path={route.path} />;
    case 'restore':
      return <RestoreWizard key={`${route.snapshot}:${route.path}`} snapshot={route.snapshot} repository={route.repository} path={route.path} kind={route.kind} />;
    case 'restore-status':
      return <RestoreStatus key={route.id} id={route.id} />;
    case 'doctor':
      return <Doctor />;
    case 'settings':
      return <Settings user={user} />;
    case 'not-found':
      return (
        <section>
          <h1>Not found</h1>
          <p>
            No page at <code>#{route.hash}</code>. <a href="#/">Go to the dashboard</a>.
          </p>
        </section>
      );
  }
}
