// Inline SVG charts (no chart library).
import { formatBytes, formatDuration } from './format';

export interface Bar { label: string; value: number; status?: string; title?: string }

const STATUS_COLOR: Record<string, string> = {
  success: '#2f855a',
  warning: '#b7791f',
  failure: '#c53030',
  interrupted: '#9b2c2c',
  running: '#2b6cb0',
  queued: '#718096',
};

export function DurationBarChart({ bars, testId }: { bars: Bar[]; testId?: string }) {
  if (bars.length === 0) return <p className="muted">No runs yet.</p>;
  const W = 600;
  const H = 180;
  const padL = 48;
  const padB = 22;
  const padT = 10;
  const max = Math.max(...bars.map((b) => b.value), 1);
  const slot = (W - padL - 8) / bars.length;
  const bw = Math.max(2, Math.min(36, slot * 0.7));
  const plotH = H - padB - padT;
  const ticks = [0, 0.5, 1];
  return (
    <svg className="chart" viewBox={`0 0 ${W} ${H}`} role="img" aria-label="Run durations" data-testid={testId}>
      <GridLines left={padL} right={W - 4} top={padT} height={plotH} ticks={ticks} label={(t) => formatDuration(max * t)} />
      {bars.map((b, i) => {
        const h = Math.max(1, (b.value / max) * plotH);
        const x = padL + i * slot + (slot - bw) / 2;
        return (
          <rect
            key={i}
            x={x}
            y={padT + plotH - h}
            width={bw}
            height={h}
            rx={2}
            fill={STATUS_COLOR[b.status ?? ''] ?? '#4a5568'}
          >
            <title>{b.title ?? `${b.label}: ${formatDuration(b.value)}`}</title>
          </rect>
        );
      })}
      <text x={padL} y={H - 6} className="axis">
        older
      </text>
      <text x={W - 4} y={H - 6} textAnchor="end" className="axis">
        newer
      </text>
    </svg>
  );
}

export interface Point { time: number; value: number }

/** Area chart of cumulative bytes over time. */
export function GrowthChart({ points, testId }: { points: Point[]; testId?: string }) {
  if (points.length === 0) return <p className="muted">No snapshots yet.</p>;
  const W = 600;
  const H = 180;
  const padL = 64;
  const padB = 22;
  const padT = 10;
  const plotW = W - padL - 8;
  const plotH = H - padB - padT;
  const t0 = points[0]!.time;
  const t1 = points[points.length - 1]!.time;
  const span = Math.max(1, t1 - t0);
  const max = Math.max(...points.map((p) => p.value), 1);
  const xy = points.map((p) => {
    const x = points.length === 1 ? padL + plotW / 2 : padL + ((p.time - t0) / span) * plotW;
    const y = padT + plotH * (1 - p.value / max);
    return [x, y] as const;
  });
  const line = xy.map(([x, y], i) => `${i === 0 ? 'M' : 'L'}${x.toFixed(1)},${y.toFixed(1)}`).join(' ');
  const area = `${line} L${xy[xy.length - 1]![0].toFixed(1)},${padT + plotH} L${xy[0]![0].toFixed(1)},${padT + plotH} Z`;
  const fmtDate = (t: number) => new Date(t).toLocaleDateString(undefined, { month: 'short', day: '2-digit' });
  return (
    <svg className="chart" viewBox={`0 0 ${W} ${H}`} role="img" aria-label="Repository growth" data-testid={testId}>
      <GridLines left={padL} right={W - 4} top={padT} height={plotH} ticks={[0, 0.5, 1]} label={(t) => formatBytes(max * t)} />
      <path d={area} fill="#bee3f8" opacity={0.7} />
      <path d={line} fill="none" stroke="#2b6cb0" strokeWidth={2} />
      {xy.map(([x, y], i) => (
        <circle key={i} cx={x} cy={y} r={2.5} fill="#2b6cb0">
          <title>{`${new Date(points[i]!.time).toLocaleString()}: ${formatBytes(points[i]!.value)}`}</title>
        </circle>
      ))}
      <text x={padL} y={H - 6} className="axis">
        {fmtDate(t0)}
      </text>
      <text x={W - 4} y={H - 6} textAnchor="end" className="axis">
        {fmtDate(t1)}
      </text>
    </svg>
  );
}

/** Repository growth, oldest first: cumulative new bytes per snapshot (logical bytes when not reported). */
export function growthPoints(snaps: { time: string; bytes: number; bytesNew?: number }[]): Point[] {
  const sorted = snaps
    .map((s) => ({ time: Date.parse(s.time), bytes: Number(typeof s.bytesNew === 'number' ? s.bytesNew : s.bytes) || 0 }))
    .filter((s) => Number.isFinite(s.time))
    .sort((a, b) => a.time - b.time);
  let sum = 0;
  return sorted.map((s) => {
    sum += s.bytes;
    return { time: s.time, value: sum };
  });
}

/** Horizontal grid lines at fractions of the plot's height, each labelled on the left. */
function GridLines({ left, right, top, height, ticks, label }: { left: number; right: number; top: number; height: number; ticks: number[]; label: (t: number) => string }) {
  return (
    <>
      {ticks.map((t) => {
        const y = top + height * (1 - t);
        return (
          <g key={t}>
            <line x1={left} x2={right} y1={y} y2={y} className="grid" />
            <text x={left - 4} y={y + 4} textAnchor="end" className="axis">
              {label(t)}
            </text>
          </g>
        );
      })}
    </>
  );
}
