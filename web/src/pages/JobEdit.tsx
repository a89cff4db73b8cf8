import { useEffect, useState, type FormEvent } from 'react';
import { api, type Job, type JobDefinition, type JobKind, type Repository } from '../api';
import { ErrorBanner, Loading } from '../components';
import { lines } from '../format';
import { navigate } from '../router';

interface FormState {
  name: string;
  enabled: boolean;
  kind: JobKind;
  sources: string;
  repository: string;
  cron: string;
  timeZone: string;
  connect: string;
}

const EMPTY: FormState = {
  name: '',
  enabled: true,
  kind: 'vm',
  sources: '',
  repository: '',
  cron: '',
  timeZone: '',
  connect: '',
};

function fromJob(job: Job): FormState {
  const d = job.definition;
  return {
    name: job.name,
    enabled: job.enabled,
    kind: d.kind,
    sources: d.sources.join('\n'),
    repository: d.repository ?? '',
    cron: d.schedule?.cron ?? '',
    timeZone: d.schedule?.timeZone ?? '',
    connect: (d.options?.connect ?? []).join('\n'),
  };
}

/** Build the definition, keeping fields this form does not edit (tags, other options). */
function toDefinition(f: FormState, base: JobDefinition | null): JobDefinition {
  const def: JobDefinition = { ...(base ?? {}), kind: f.kind, sources: lines(f.sources) };
  const repo = f.repository.trim();
  if (repo) def.repository = repo;
  else delete def.repository;
  const cron = f.cron.trim();
  if (cron) {
    const tz = f.timeZone.trim();
    def.schedule = tz ? { cron, timeZone: tz } : { cron };
  } else delete def.schedule;
  const options = { ...(base?.options ?? {}) };
  const connect = lines(f.connect);
  if (f.kind === 'vm' && connect.length > 0) options.connect = connect;
  else delete options.connect;
  if (Object.keys(options).length > 0) def.options = options;
  else delete def.options;
  return def;
}

export function JobEdit({ id }: { id: number | null }) {
  const [form, setForm] = useState<FormState>(EMPTY);
  const [job, setJob] = useState<Job | null>(null);
  const [repos, setRepos] = useState<Repository[]>([]);
  const [loading, setLoading] = useState(id !== null);
  const [error, setError] = useState<unknown>(null);
  const [saving, setSaving] = useState(false);
  const [confirmDelete, setConfirmDelete] = useState(false);

  useEffect(() => {
    let alive = true;
    api.repositories().then(
      (r) => alive && setRepos(r.repositories),
      () => undefined,
    );
    if (id !== null) {
      api.job(id).then(
        (j) => {
          if (!alive) return;
          setJob(j);
          setForm(fromJob(j));
          setLoading(false);
        },
        (e: unknown) => {
          if (!alive) return;
          setError(e);
          setLoading(false);
        },
      );
    }
    return () => {
      alive = false;
    };
  }, [id]);

  const set = <K extends keyof FormState>(k: K, v: FormState[K]) => setForm((f) => ({ ...f, [k]: v }));

  const save = async (e: FormEvent) => {
    e.preventDefault();
    setSaving(true);
    setError(null);
    const body = { name: form.name.trim(), enabled: form.enabled, definition: toDefinition(form, job?.definition ?? null) };
    try {
      if (id === null) await api.createJob(body);
      else await api.updateJob(id, body);
      navigate('/jobs');
    } catch (err) {
      setError(err);
      setSaving(false);
    }
  };

  const remove = async () => {
    if (id === null) return;
    setSaving(true);
    setError(null);
    try {
      await api.deleteJob(id);
      navigate('/jobs');
    } catch (err) {
      setError(err);
      setSaving(false);
    }
  };

  if (loading) return <Loading />;

  return (
    <section>
      <div className="page-head">
        <h1>{id === null ? 'New job' : `Edit job ${job?.name ?? ''}`}</h1>
        <a href="#/jobs">Back to jobs</a>
      </div>
      <ErrorBanner error={error} />
      <form className="card form" onSubmit={(e) => void save(e)}>
        <label>
          Name
          <input data-testid="job-name" required value={form.name} onChange={(e) => set('name', e.target.value)} />
        </label>
        <label>
          Kind
          <select data-testid="job-kind" value={form.kind} onChange={(e) => set('kind', e.target.value as JobKind)}>
            <option value="vm">vm</option>
            <option value="folder">folder</option>
          </select>
        </label>
        <label>
          Sources <span className="muted small">(one per line{form.kind === 'vm' ? ': VM names' : ': paths'})</span>
          <textarea
            data-testid="job-sources"
            rows={4}
            required
            value={form.sources}
            onChange={(e) => set('sources', e.target.value)}
          />
        </label>
        <label>
          Repository <span className="muted small">(empty = server default)</span>
          <input
            data-testid="job-repository"
            list="repo-names"
            value={form.repository}
            onChange={(e) => set('repository', e.target.value)}
          />
          <datalist id="repo-names">
            {repos.map((r) => (
              <option key={r.name} value={r.name}>
                {r.location}
              </option>
            ))}
          </datalist>
        </label>
        <div className="row2">
          <label>
            Schedule (cron) <span className="muted small">(empty = manual only)</span>
            <input
              data-testid="job-cron"
              className="mono"
              placeholder="0 2 * * *"
              value={form.cron}
              onChange={(e) => set('cron', e.target.value)}
            />
          </label>
          <label>
            Time zone
            <input
              data-testid="job-timezone"
              placeholder="Europe/Berlin"
              value={form.timeZone}
              onChange={(e) => set('timeZone', e.target.value)}
            />
          </label>
        </div>
        {form.kind === 'vm' ? (
          <label>
            Connect <span className="muted small">(how to reach the hypervisor and guest agent, one per line)</span>
            <textarea
              data-testid="job-connect"
              rows={2}
              className="mono"
              placeholder="qemu:///system"
              value={form.connect}
              onChange={(e) => set('connect', e.target.value)}
            />
          </label>
        ) : null}
        <label className="check">
          <input
            type="checkbox"
            data-testid="job-enabled"
            checked={form.enabled}
            onChange={(e) => set('enabled', e.target.checked)}
          />
          Enabled (scheduled runs happen)
        </label>
        <div className="form-actions">
          <button type="submit" className="primary" data-testid="job-save" disabled={saving}>
            {saving ? 'Saving…' : 'Save'}
          </button>
          <a href="#/jobs">Cancel</a>
          {id !== null ? (
            confirmDelete ? (
              <>
                <button type="button" className="danger" data-testid="job-delete-confirm" onClick={() => void remove()}>
                  Really delete
                </button>
                <button type="button" onClick={() => setConfirmDelete(false)}>
                  Keep
                </button>
              </>
            ) : (
              <button type="button" className="danger push-right" data-testid="job-delete" onClick={() => setConfirmDelete(true)}>
                Delete job
              </button>
            )
          ) : null}
        </div>
      </form>
    </section>
  );
}
