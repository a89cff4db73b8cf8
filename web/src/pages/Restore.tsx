// The restore wizard: what (the restore point, a path in it, or its whole disks), where (a new or
// empty folder: the server refuses to overwrite anything), how (disk format, instant boot), then the
// restore followed until it ends.
import { useEffect, useState, type FormEvent } from 'react';
import { api, type Restore } from '../api';
import { ErrorBanner, Loading, StatusBadge } from '../components';
import { href, navigate } from '../router';

export function RestoreWizard(props: { snapshot: string; repository: string; path: string; kind: 'files' | 'vm' }) {
  const [kind, setKind] = useState<'files' | 'vm'>(props.kind);
  const [target, setTarget] = useState('');
  const [format, setFormat] = useState<'raw' | 'qcow2'>('qcow2');
  const [instant, setInstant] = useState(false);
  const [define, setDefine] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const r = await api.startRestore({
        snapshot: props.snapshot,
        kind,
        target: target.trim(),
        ...(props.repository ? { repository: props.repository } : {}),
        ...(kind === 'files' && props.path !== '/' ? { path: props.path } : {}),
        ...(kind === 'vm' ? { format, instant, define } : {}),
      });
      navigate(`/restore/${r.id}`);
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };

  return (
    <section>
      <div className="page-head">
        <h1>Restore</h1>
        <a href={href(`/snapshots/${props.snapshot}`, { repository: props.repository, path: props.path })}>Back to the restore point</a>
      </div>
      <ErrorBanner error={error} />
      <form className="panel form" onSubmit={(e) => void submit(e)}>
        <p>
          Restore point <code>{props.snapshot.slice(0, 8)}</code>
          {kind === 'files' ? (
            <>
              , path <code>{props.path}</code>
            </>
          ) : null}
        </p>
        <label>
          What
          <select data-testid="restore-kind" value={kind} onChange={(e) => setKind(e.target.value as 'files' | 'vm')}>
            <option value="files">Files and folders (this path)</option>
            <option value="vm">Whole VM disks</option>
          </select>
        </label>
        <label>
          Into folder (new or empty; nothing is overwritten)
          <input data-testid="restore-target" required value={target} placeholder="/srv/restore/web01" onChange={(e) => setTarget(e.target.value)} />
        </label>
        {kind === 'vm' ? (
          <>
            <label>
              Disk format
              <select data-testid="restore-format" value={format} onChange={(e) => setFormat(e.target.value as 'raw' | 'qcow2')}>
                <option value="qcow2">qcow2</option>
                <option value="raw">raw</option>
              </select>
            </label>
            <label className="check">
              <input type="checkbox" data-testid="restore-instant" checked={instant} onChange={(e) => setInstant(e.target.checked)} /> Instant: boot the VM now from the backup while its disks are copied
            </label>
            <label className="check">
              <input type="checkbox" data-testid="restore-define" checked={define} onChange={(e) => setDefine(e.target.checked)} /> Define the VM again on the restored disks
            </label>
          </>
        ) : null}
        <div className="form-actions">
          <button type="submit" className="primary" data-testid="restore-start" disabled={busy}>
            Start restore
          </button>
        </div>
      </form>
    </section>
  );
}

export function RestoreStatus({ id }: { id: string }) {
  const [restore, setRestore] = useState<Restore | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let alive = true;
    let timer = 0;
    const load = async () => {
      try {
        const r = await api.restore(id);
        if (!alive) return;
        setRestore(r);
        setError(null);
        if (r.status === 'running') timer = window.setTimeout(() => void load(), 1000);
      } catch (e) {
        if (alive) setError(e);
      }
    };
    void load();
    return () => {
      alive = false;
      window.clearTimeout(timer);
    };
  }, [id]);
  if (!restore) return error ? <ErrorBanner error={error} /> : <Loading />;
  return (
    <section>
      <h1>Restore {restore.request.snapshot.slice(0, 8)}</h1>
      <ErrorBanner error={error} />
      <div className="panel">
        <p>
          <StatusBadge status={restore.status} testId="restore-status" /> into <code>{restore.request.target}</code>
        </p>
        {restore.error ? (
          <div className="banner banner-error" data-testid="restore-error">
            <strong>{restore.error}</strong>
            {restore.hint ? <div className="hint">{restore.hint}</div> : null}
          </div>
        ) : null}
        {restore.output.length > 0 ? <pre className="output" data-testid="restore-output">{restore.output.join('\n')}</pre> : null}
      </div>
    </section>
  );
}
