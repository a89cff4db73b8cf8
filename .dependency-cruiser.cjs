// The layer rule of DESIGN §3, checked rather than remembered: imports point down this list only.
// cli/server -> jobs -> sources/restore -> quiesce -> hypervisors/formats/filesystems -> protocols -> repository -> storage -> util
// (DESIGN's middle row is ordered here: the consistency protocol drives drivers, drivers speak wire protocols.)
const layers = [
  ['cli', 'server'],
  ['jobs'],
  ['sources', 'restore'],
  ['quiesce'],
  ['hypervisors', 'formats', 'filesystems'],
  ['protocols'],
  ['repository'],
  ['storage'],
  ['util'],
];
const forbidden = [
  { name: 'no-circular', severity: 'error', from: {}, to: { circular: true } },
  {
    name: 'no-test-code-in-product',
    severity: 'error',
    from: { path: '^src/', pathNot: '\\.test\\.ts$|/testing/' },
    to: { path: '\\.test\\.ts$|/testing/|^test/' },
  },
];
// The hypervisor seam (src/hypervisors/session.ts): jobs and the CLI reach VMs through a driver's
// session, never through a wire protocol's client.
forbidden.push({
  name: 'no-protocol-clients-above-the-seam',
  comment: 'jobs/ and cli/ talk to hypervisors through hypervisors/session.ts, not protocols/',
  severity: 'error',
  from: { path: '^src/(jobs|cli)/' },
  to: { path: '^src/protocols/' },
});
layers.forEach((group, i) => {
  const above = layers.slice(0, i).flat();
  if (above.length === 0) return;
  forbidden.push({
    name: `layer-${group.join('-')}-not-upward`,
    comment: `${group.join('/')} may not import from layers above it (${above.join(', ')})`,
    severity: 'error',
    from: { path: `^src/(${group.join('|')})/` },
    to: { path: `^src/(${above.join('|')})/` },
  });
});
module.exports = {
  forbidden,
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: '\\.test\\.ts$' },
  },
};
