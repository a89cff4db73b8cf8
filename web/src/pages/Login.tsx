import { useState, type FormEvent } from 'react';
import { api, type Session } from '../api';
import { ErrorBanner } from '../components';

export function Login({ onLogin }: { onLogin: (s: Session) => void }) {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const s = await api.login(username, password);
      onLogin(s);
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };

  return (
    <main className="login-wrap">
      <form className="card login" onSubmit={(e) => void submit(e)}>
        <h1>Bulwark</h1>
        <p className="muted">Sign in to manage backups.</p>
        <ErrorBanner error={error} />
        <label>
          Username
          <input
            data-testid="login-username"
            name="username"
            autoComplete="username"
            autoFocus
            required
            value={username}
            onChange={(e) => setUsername(e.target.value)}
          />
        </label>
        <label>
          Password
          <input
            data-testid="login-password"
            name="password"
            type="password"
            autoComplete="current-password"
            required
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
        </label>
        <button type="submit" className="primary" data-testid="login-submit" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}
