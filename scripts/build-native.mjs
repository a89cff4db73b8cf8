// Builds native/ (bulwark_native.node: lseek SEEK_DATA/SEEK_HOLE, docs/performance.md) with node-gyp.
// Run by `npm install`/`npm ci` and by `npm run build`. Without a compiler the build fails, and Bulwark
// works without it: sparse files are then read whole (holes at memcmp speed). Nothing is downloaded
// when Node's headers are installed (Debian's nodejs: /usr/include/node).
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = join(dirname(fileURLToPath(import.meta.url)), '..', 'native');
const built = join(dir, 'build', 'Release', 'bulwark_native.node');
const sources = ['bulwark_native.c', 'binding.gyp'].map((f) => join(dir, f));

if (existsSync(built) && sources.every((s) => statSync(s).mtimeMs <= statSync(built).mtimeMs)) process.exit(0);

// npm tells its lifecycle scripts where its node-gyp is; else npm's copy next to this Node.
const gyp = [process.env['npm_config_node_gyp'], join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js')].find((p) => p && existsSync(p));
const nodedir = process.env['npm_config_nodedir'] || (existsSync('/usr/include/node/node_api.h') ? '/usr' : undefined);
const args = gyp ? [gyp, 'rebuild', '--silent', ...(nodedir ? [`--nodedir=${nodedir}`] : [])] : [];
const r = gyp ? spawnSync(process.execPath, args, { cwd: dir, stdio: ['ignore', 'inherit', 'inherit'] }) : undefined;
if (!r || r.status !== 0) {
  process.stderr.write(`bulwark: the native helpers (native/) were not built${gyp ? '' : ': node-gyp not found'}; sparse files will be read whole. Install a C compiler, make and python3, then run 'npm run build'.\n`);
}
