import { useCallback, useEffect, useState, type ReactNode } from 'react';
import { errorInfo } from './api';

export function ErrorBanner({ error }: { error: unknown }) {
  if (!error) return null;
  const { message, hint } = errorInfo(error);
  return (
    <div className="banner banner-error" role="alert" data-testid="error">
      <strong>{message}</strong>
      {hint ? <div className="hint">{hint}</div> : null}
    </div>
  );
}

export function StatusBadge({ status, testId }: { status: string; testId?: string }) {
  return (
    <span className={`badge badge-${status}`} data-testid={testId}>
      {status}
    </span>
  );
}

export function Loading() {
  return <p className="muted">Loading…</p>;
}

/** Load data once (and again on reload()); keeps the last good value when a reload fails. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  const fn = useCallback(load, deps);
  useEffect(() => {
    let alive = true;
    setLoading(true);
    fn().then(
      (d) => {
        if (!alive) return;
        setData(d);
        setError(null);
        setLoading(false);
      },
      (e: unknown) => {
        if (!alive) return;
        setError(e);
        setLoading(false);
      },
    );
    return () => {
      alive = false;
    };
  }, [fn, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, error, loading, reload, setData };
}

/** A table that scrolls sideways inside its own box on a narrow screen. */
export function Table({ headers, className, testId, children }: { headers: string[]; className?: string; testId?: string; children: ReactNode }) {
  return (
    <div className="table-wrap">
      <table className={className} data-testid={testId}>
        <thead>
          <tr>
            {headers.map((h, i) => (
              <th key={i}>{h}</th>
            ))}
          </tr>
        </thead>
        <tbody>{children}</tbody>
      </table>
    </div>
  );
}
