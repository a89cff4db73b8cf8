// `bulwark serve` as users start it (the built CLI in a child process), and a small client of its API
// that keeps the session cookie and CSRF token and checks every JSON answer against the server's own
// OpenAPI document.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { BIN, CACHE_DIR, NODE } from './cli.js';

/** A run as the API answers it, as far as the tests read it. */
export interface RunJson {
  id: string;
  status: string;
  trigger: string;
  jobName: string;
}

/** Processes whose command line carries a run's tag: the backup commands of that run still alive. */
export function processesOfRun(runId: string): string[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(`bulwark-run=${runId}`);
      } catch {
        return false;
      }
    });
}

export interface ServeProcess {
  url: string;
  child: ChildProcess;
  stderr(): string;
  /** SIGTERM and wait for the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL, as a crash: no cleanup runs. */
  kill(): Promise<void>;
}

export async function startServe(args: string[], env: Record<string, string>, timeoutMs = 60_000): Promise<ServeProcess> {
  const child = spawn(NODE, [BIN, '--json', 'serve', '--listen', '127.0.0.1:0', ...args], { env: { ...process.env, BULWARK_CACHE_DIR: CACHE_DIR, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start in ${timeoutMs} ms:\n${err}`)), timeoutMs);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const doc = JSON.parse(line) as { url?: string };
        if (doc.url) {
          clearTimeout(timer);
          resolve(doc.url);
        }
      } catch {
        // not a JSON line
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`serve exited ${code} before listening:\n${err}`));
    });
  });
  return {
    url,
    child,
    stderr: () => err,
    async stop() {
      child.kill('SIGTERM');
      return exited;
    },
    async kill() {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

type Validator = (path: string, method: string, status: number, body: unknown) => void;

/** Checks answers against the document's response schemas; throws with what did not match. */
export async function openApiValidator(baseUrl: string): Promise<Validator> {
  const doc = (await (await fetch(`${baseUrl}/api/v1/openapi.json`)).json()) as {
    components: { schemas: Record<string, unknown> };
    paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: { $ref?: string } }> }> }>>;
  };
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats.default(ajv);
  ajv.addSchema({ $id: 'bulwark', components: doc.components });
  const templates = Object.keys(doc.paths).map((p) => ({ p, re: new RegExp('^' + p.replace(/\{[^}]+\}/g, '[^/]+') + '$') }));
  return (path, method, status, body) => {
    const tpl = templates.find((t) => t.re.test(path.split('?')[0]!));
    if (!tpl) throw new Error(`${method} ${path} is not in the OpenAPI document`);
    const op = doc.paths[tpl.p]![method.toLowerCase()];
    if (!op) throw new Error(`${method} ${tpl.p} is not in the OpenAPI document`);
    const res = op.responses[String(status)];
    if (!res) throw new Error(`${method} ${tpl.p} answered ${status}, which the OpenAPI document does not list`);
    const schema = res.content?.['application/json']?.schema;
    if (!schema) return;
    const validate = ajv.compile({ $ref: `bulwark${schema.$ref}` });
    if (!validate(body)) throw new Error(`${method} ${path} (${status}) does not match the OpenAPI document: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(body).slice(0, 2000)}`);
  };
}

export class ApiClient {
  cookie = '';
  csrf = '';

  constructor(
    readonly base: string,
    private readonly validate?: Validator,
  ) {}

  async login(username: string, password: string): Promise<Response> {
    const res = await fetch(`${this.base}/api/v1/login`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ username, password }) });
    if (res.ok) {
      this.cookie = res.headers.get('set-cookie')!.split(';')[0]!;
      this.csrf = ((await res.clone().json()) as { csrfToken: string }).csrfToken;
    }
    return res;
  }

  /** A JSON request with the session (and its CSRF token); the answer is checked against the document. */
  async call<T = unknown>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: T }> {
    const res = await fetch(`${this.base}/api/v1${path}`, {
      method,
      headers: { ...(this.cookie ? { Cookie: this.cookie } : {}), ...(method !== 'GET' && this.csrf ? { 'X-CSRF-Token': this.csrf } : {}), ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers },
      ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    const parsed = text && (res.headers.get('content-type') ?? '').includes('json') ? (JSON.parse(text) as T) : (text as T);
    this.validate?.(path, method, res.status, parsed);
    return { status: res.status, body: parsed };
  }

  /** Polls until `done` holds for the answer, or throws after `timeoutMs`. */
  async until<T>(path: string, done: (body: T) => boolean, timeoutMs = 120_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let last: T | undefined;
    while (Date.now() < deadline) {
      const r = await this.call<T>('GET', path);
      last = r.body;
      if (r.status === 200 && done(r.body)) return r.body;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    throw new Error(`GET ${path} did not reach the expected state in ${timeoutMs} ms; last: ${JSON.stringify(last).slice(0, 2000)}`);
  }
}
