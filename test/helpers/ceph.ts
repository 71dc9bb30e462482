/**
 * A real Ceph cluster (mon, mgr, osd, radosgw) for tests, started with tools/ceph/ceph-up.sh.
 *
 * - If CEPH_CONF is set, that cluster is used (and S3_ENDPOINT etc. for S3): a test runner can
 *   start one cluster for the whole run with `eval "$(tools/ceph/ceph-up.sh DIR)"`.
 * - Otherwise the first test process of an ava run that needs it starts one (lazily, on the
 *   first getCeph()/getS3()), and the other test processes of the same run share it. A
 *   detached watchdog stops it (tools/ceph/ceph-down.sh) as soon as the ava run is over,
 *   even if ava is killed.
 * - Without Ceph (not installed and not installable), tests declared with `cephTest` are
 *   skipped, except under CI=true, where they run and fail.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { createHash } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { isMainThread } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { Readable } from 'node:stream';
import { S3Client } from '@aws-sdk/client-s3';
import test, { type ExecutionContext } from 'ava';

export const CEPH_TOOLS = fileURLToPath(new URL('../../../tools/ceph/', import.meta.url));

export interface S3Endpoint {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
}

export interface CephCluster {
  /** DIR/ceph.conf; pass `env` to child processes (it has CEPH_CONF) */
  conf: string;
  env: NodeJS.ProcessEnv;
  pools: string[];
  s3?: S3Endpoint;
  /** started by this helper (vs. given by the environment) */
  started: boolean;
}

/**
 * Ceph suites always run: tools/test.sh installs the packages (tools/setup.sh --test) and
 * starts one cluster for the whole run; a machine where that is impossible fails them.
 */
/** Declares one test (the shape store-contract.ts and Ceph tests use). */
export type DeclareTest = (title: string, implementation: (t: ExecutionContext) => PromiseLike<void> | void) => void;

export const cephTest: DeclareTest = (title, impl) => test(title, impl);
export const cephSerialTest: DeclareTest = (title, impl) => test.serial(title, impl);

// ------------------------------------------------------------------ cluster lifecycle

function parseExports(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^export ([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (!m) continue;
    let v = m[2]!;
    if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
    env[m[1]!] = v;
  }
  return env;
}

function clusterFromEnv(e: Record<string, string | undefined>, started: boolean): CephCluster {
  const conf = e.CEPH_CONF!;
  const s3 =
    e.S3_ENDPOINT && e.S3_ACCESS_KEY && e.S3_SECRET_KEY
      ? { endpoint: e.S3_ENDPOINT, region: e.S3_REGION ?? 'us-east-1', accessKeyId: e.S3_ACCESS_KEY, secretAccessKey: e.S3_SECRET_KEY }
      : undefined;
  return {
    conf,
    env: { ...process.env, CEPH_CONF: conf },
    pools: (e.CEPH_POOLS ?? e.CEPH_RBD_POOLS ?? 'volumes backups').split(/\s+/).filter(Boolean),
    ...(s3 ? { s3 } : {}),
    started,
  };
}

async function freePorts(n: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const s = net.createServer();
      await new Promise<void>((res, rej) => s.once('error', rej).listen(0, '127.0.0.1', () => res()));
      servers.push(s);
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
}

function runCephUp(dir: string, ports: number[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [path.join(CEPH_TOOLS, 'ceph-up.sh'), dir], {
      env: {
        ...process.env,
        CEPH_MON_PORT: String(ports[0]),
        CEPH_MON_V1_PORT: String(ports[1]),
        CEPH_RGW_PORT: String(ports[2]),
        CEPH_OSD_SIZE: process.env.CEPH_OSD_SIZE ?? '8G',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-20000)));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

async function startCluster(runDir: string): Promise<Record<string, string>> {
  const dir = path.join(runDir, 'cluster');
  let last = '';
  for (let attempt = 1; attempt <= 3; attempt++) {
    const r = await runCephUp(dir, await freePorts(3));
    if (r.code === 0) return parseExports(r.stdout);
    last = r.stderr;
    spawnSync('bash', [path.join(CEPH_TOOLS, 'ceph-down.sh'), dir], { stdio: 'ignore' });
    if (!/already in use/.test(r.stderr)) break; // only a lost race for a port is worth retrying
  }
  throw new Error(`tools/ceph/ceph-up.sh failed:\n${last.split('\n').slice(-40).join('\n')}`);
}

/** Stops the cluster of runDir when `owner` exits (or runDir disappears). */
function spawnWatchdog(runDir: string, owner: number): void {
  const down = path.join(CEPH_TOOLS, 'ceph-down.sh');
  const script =
    `while kill -0 ${owner} 2>/dev/null && [ -d "$1" ]; do sleep 1; done; ` +
    `[ -d "$1/cluster" ] && bash "$2" "$1/cluster" >/dev/null 2>&1; rm -rf -- "$1"`;
  const child = spawn('bash', ['-c', script, 'ceph-watchdog', runDir, down], { detached: true, stdio: 'ignore' });
  child.unref();
}

async function sharedCluster(): Promise<CephCluster> {
  // one cluster per ava run: ava's main process is the parent of each test worker process
  const owner = isMainThread ? process.ppid : process.pid;
  const runDir = path.join(os.tmpdir(), `blockgate-ceph-run-${owner}`);
  const stateFile = path.join(runDir, 'state.json');
  let starter = false;
  try {
    fs.mkdirSync(runDir);
    starter = true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  if (starter) {
    spawnWatchdog(runDir, owner);
    let state: { ok: boolean; env?: Record<string, string>; error?: string };
    try {
      state = { ok: true, env: await startCluster(runDir) };
    } catch (e) {
      state = { ok: false, error: (e as Error).message };
    }
    fs.writeFileSync(`${stateFile}.tmp`, JSON.stringify(state));
    fs.renameSync(`${stateFile}.tmp`, stateFile);
  }
  const deadline = Date.now() + 15 * 60_000;
  for (;;) {
    if (fs.existsSync(stateFile)) {
      const state = JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { ok: boolean; env?: Record<string, string>; error?: string };
      if (!state.ok) throw new Error(state.error ?? 'the shared Ceph cluster failed to start');
      return clusterFromEnv(state.env!, true);
    }
    if (!fs.existsSync(runDir)) throw new Error(`the shared Ceph cluster directory ${runDir} disappeared`);
    if (Date.now() > deadline) throw new Error('timed out waiting for the shared Ceph cluster');
    await new Promise((r) => setTimeout(r, 250));
  }
}

let clusterPromise: Promise<CephCluster> | null = null;

/** The cluster for this run (started on first call unless CEPH_CONF is set). */
export function getCeph(): Promise<CephCluster> {
  if (!clusterPromise) {
    clusterPromise = process.env.CEPH_CONF ? Promise.resolve(clusterFromEnv(process.env, false)) : sharedCluster();
  }
  return clusterPromise;
}

/** An S3 endpoint: S3_ENDPOINT/S3_ACCESS_KEY/S3_SECRET_KEY from the environment, else the cluster's radosgw. */
export async function getS3(): Promise<S3Endpoint> {
  const e = process.env;
  if (e.S3_ENDPOINT && e.S3_ACCESS_KEY && e.S3_SECRET_KEY) {
    return { endpoint: e.S3_ENDPOINT, region: e.S3_REGION ?? 'us-east-1', accessKeyId: e.S3_ACCESS_KEY, secretAccessKey: e.S3_SECRET_KEY };
  }
  const c = await getCeph();
  if (!c.s3) throw new Error('the Ceph cluster in CEPH_CONF has no S3 settings (set S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY)');
  return c.s3;
}

// ------------------------------------------------------------------ commands

export interface RunResult {
  stdout: Buffer;
  stderr: string;
}

/** Runs a command; rejects with its stderr when it exits non-zero. */
export function run(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; input?: Buffer | Readable; onStdout?: (chunk: Buffer) => void; allowFail?: boolean } = {},
): Promise<RunResult & { code: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => (opts.onStdout ? opts.onStdout(d) : out.push(d)));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-8000)));
    child.stdin.on('error', () => {}); // EPIPE when the command exits early: its exit code tells
    if (opts.input && Buffer.isBuffer(opts.input)) child.stdin.end(opts.input);
    else if (opts.input) (opts.input as Readable).pipe(child.stdin);
    else child.stdin.end();
    child.on('error', reject);
    child.on('close', (code) => {
      const r = { stdout: Buffer.concat(out), stderr: err, code: code ?? -1 };
      if (r.code !== 0 && !opts.allowFail) reject(new Error(`${cmd} ${args.join(' ')} failed (exit ${r.code}): ${err.trim().slice(-2000)}`));
      else resolve(r);
    });
  });
}

/** `rbd ARGS` against the cluster; stdout as a Buffer. */
export async function rbd(c: CephCluster, args: string[], input?: Buffer | Readable): Promise<Buffer> {
  return (await run('rbd', args, { env: c.env, ...(input ? { input } : {}) })).stdout;
}

/** sha256 and length of `rbd export SPEC -`, streamed. */
export async function rbdExportSha(c: CephCluster, spec: string): Promise<{ sha256: string; bytes: number }> {
  const h = createHash('sha256');
  let bytes = 0;
  await run('rbd', ['export', '--no-progress', spec, '-'], {
    env: c.env,
    onStdout: (d) => {
      h.update(d);
      bytes += d.length;
    },
  });
  return { sha256: h.digest('hex'), bytes };
}

export type ImageOp =
  | { op: 'write'; offset: number; data: Buffer }
  | { op: 'discard'; offset: number; length: number }
  | { op: 'snap'; name: string }
  | { op: 'resize'; size: number };

const PY_OPS = `
import base64, json, sys, rados, rbd
req = json.load(sys.stdin)
with rados.Rados(conffile=req['conf']) as cluster:
    with cluster.open_ioctx(req['pool']) as io:
        with rbd.Image(io, req['image']) as img:
            for o in req['ops']:
                if o['op'] == 'write':
                    img.write(base64.b64decode(o['data']), o['offset'])
                elif o['op'] == 'discard':
                    img.discard(o['offset'], o['length'])
                elif o['op'] == 'snap':
                    img.create_snap(o['name'])
                elif o['op'] == 'resize':
                    img.resize(o['size'])
            img.flush()
`;

/** Applies writes/discards/snapshots/resizes to an RBD image through librbd (python3-rbd, part of ceph-common). */
export async function rbdApply(c: CephCluster, pool: string, image: string, ops: ImageOp[]): Promise<void> {
  const req = {
    conf: c.conf,
    pool,
    image,
    ops: ops.map((o) => (o.op === 'write' ? { ...o, data: o.data.toString('base64') } : o)),
  };
  // /usr/bin/python3: the Debian python that has the rados/rbd modules (not a pyenv shim)
  const py = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
  await run(py, ['-c', PY_OPS], { env: c.env, input: Buffer.from(JSON.stringify(req)) });
}

/** a plain S3 client on the test endpoint, for looking under the repository driver */
export function rawS3Client(s3: S3Endpoint): S3Client {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
  return new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
  });
}
