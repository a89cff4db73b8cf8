import { api, type Finding } from '../api';
import { ErrorBanner, Loading, Table, useLoad } from '../components';

const ORDER = { error: 0, warning: 1, info: 2 } as const;

function Findings({ findings, testId }: { findings: Finding[]; testId: string }) {
  if (findings.length === 0) return <p className="ok-line">No problems found.</p>;
  const sorted = [...findings].sort((a, b) => (ORDER[a.severity] ?? 3) - (ORDER[b.severity] ?? 3));
  return (
    <ul className="findings" data-testid={testId}>
      {sorted.map((f, i) => (
        <li key={i} className={`finding sev-${f.severity}`} data-testid="finding">
          <span className={`badge badge-sev-${f.severity}`}>{f.severity}</span>
          {f.vm ? <strong> {f.vm}:</strong> : null} {f.message}
          {f.fix ? (
            <div className="fix">
              Fix: <code>{f.fix}</code>
            </div>
          ) : null}
        </li>
      ))}
    </ul>
  );
}

export function Doctor() {
  const doctor = useLoad(() => api.doctor(), []);
  const vms = useLoad(() => api.vms(), []);
  return (
    <section>
      <div className="page-head">
        <h1>Doctor</h1>
        <button
          type="button"
          onClick={() => {
            doctor.reload();
            vms.reload();
          }}
        >
          Check again
        </button>
      </div>
      <div className="panel">
        <h2>Host checks</h2>
        <ErrorBanner error={doctor.error} />
        {doctor.loading && !doctor.data ? <Loading /> : null}
        {doctor.data ? <Findings findings={doctor.data.findings} testId="doctor-findings" /> : null}
      </div>
      <div className="panel">
        <h2>Virtual machines</h2>
        <ErrorBanner error={vms.error} />
        {vms.loading && !vms.data ? <Loading /> : null}
        {vms.data ? (
          <>
            {vms.data.findings.length > 0 ? <Findings findings={vms.data.findings} testId="vm-findings" /> : null}
            {vms.data.vms.length === 0 ? (
              <p className="muted">No VMs found.</p>
            ) : (
              <Table headers={['Name', 'State', 'Disks']}>
                {vms.data.vms.map((vm) => (
                  <tr key={vm.name} data-testid={`vm-row-${vm.name}`}>
                    <td>{vm.name}</td>
                    <td>{vm.state}</td>
                    <td className="mono small">{describeDisks(vm.disks)}</td>
                  </tr>
                ))}
              </Table>
            )}
          </>
        ) : null}
      </div>
    </section>
  );
}

function describeDisks(disks: unknown[] | number | undefined): string {
  // The server sends a count; a list (names or objects) is shown as such.
  if (typeof disks === 'number') return disks === 0 ? '—' : String(disks);
  if (!Array.isArray(disks) || disks.length === 0) return '—';
  return disks
    .map((d) => {
      if (typeof d === 'string') return d;
      if (d && typeof d === 'object') {
        const o = d as Record<string, unknown>;
        const name = o['target'] ?? o['name'] ?? o['device'];
        const src = o['source'] ?? o['path'] ?? o['file'];
        return [name, src].filter((x) => typeof x === 'string').join(' ') || JSON.stringify(d);
      }
      return String(d);
    })
    .join(', ');
}
