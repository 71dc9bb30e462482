/**
 * Helpers for the instant-restore tests: in-process models (a disk with a volatile write
 * cache that can be "crashed", a backup in memory, an ownership log) for the hydrate
 * filter, and the real thing: a daemon child process that can be SIGKILLed and restarted, a
 * libnbd guest (the system python3 with `import nbd`) driven line by line, sparse images.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { ExecutionContext } from 'ava';
import { BlockDeviceError, type BlockDevice } from '../../blockdev/types.js';
import type { HydrateSource } from '../../gateway/devices/hydrate.js';
import { CLI } from './core.js';
import { waitListening } from './daemon.js';

// ------------------------------------------------------------------ randomness

/** a small seeded PRNG (mulberry32) so a failing seed can be replayed */
export function rng(seed: number): () => number {
  let a = seed >>> 0 || 1;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randInt(r: () => number, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo + 1));
}

export function seededBytes(r: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
}

const tick = (r: () => number, max: number) => new Promise<void>((res) => setTimeout(res, Math.floor(r() * (max + 1))));

// ------------------------------------------------------------------ in-process models

/**
 * A disk with a volatile write cache: reads see every completed write; flush() makes the
 * writes completed before it was called durable; crashImage() is what survives a power cut
 * at this instant: the durable image plus any subset of the writes not yet flushed.
 * Every call takes a random few milliseconds, so interleavings vary with the seed.
 */
export class VolatileDisk implements BlockDevice {
  readonly readOnly = false;
  readonly current: Buffer;
  durable: Buffer;
  private unflushed: { off: number; data: Buffer }[] = [];
  crashed = false;
  flushes = 0;

  constructor(image: Buffer, private readonly r: () => number, private readonly maxDelay = 2) {
    this.current = Buffer.from(image);
    this.durable = Buffer.from(image);
  }

  get size(): number {
    return this.current.length;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    await tick(this.r, this.maxDelay);
    return Buffer.from(this.current.subarray(offset, offset + length));
  }

  async write(offset: number, data: Buffer, fua?: boolean): Promise<void> {
    if (offset + data.length > this.size) throw new BlockDeviceError('EINVAL', 'past the end');
    await tick(this.r, this.maxDelay);
    if (this.crashed) return;
    data.copy(this.current, offset);
    this.unflushed.push({ off: offset, data: Buffer.from(data) });
    if (fua) await this.flush();
  }

  async zero(offset: number, length: number): Promise<void> {
    await this.write(offset, Buffer.alloc(length));
  }

  async flush(): Promise<void> {
    const n = this.unflushed.length;
    await tick(this.r, this.maxDelay * 2);
    if (this.crashed) return;
    for (const w of this.unflushed.slice(0, n)) w.data.copy(this.durable, w.off);
    this.unflushed = this.unflushed.slice(n);
    this.flushes++;
  }

  /** the image after a power cut now; the disk stops taking writes */
  crash(keep: () => boolean): Buffer {
    this.crashed = true;
    const img = Buffer.from(this.durable);
    for (const w of this.unflushed) if (keep()) w.data.copy(img, w.off);
    return img;
  }
}

/** A backup in memory; all-zero blocks are holes. Reads take a random few milliseconds. */
export class MemSource implements HydrateSource {
  reads = 0;
  constructor(readonly image: Buffer, readonly blockSize: number, private readonly r: () => number, private readonly maxDelay = 3) {}
  get size(): number {
    return this.image.length;
  }
  isHole(b: number): boolean {
    const s = this.image.subarray(b * this.blockSize, Math.min(this.size, (b + 1) * this.blockSize));
    return s.every((x) => x === 0);
  }
  async read(b: number): Promise<Buffer | null> {
    this.reads++;
    await tick(this.r, this.maxDelay);
    if (this.isHole(b)) return null;
    return this.image.subarray(b * this.blockSize, Math.min(this.size, (b + 1) * this.blockSize));
  }
}

/** The catalog's part: committed bits, set atomically at one instant (as an LMDB transaction). */
export class MemLog {
  readonly committed: Uint8Array;
  crashed = false;
  commits = 0;
  constructor(blocks: number, private readonly r: () => number, initial?: Uint8Array) {
    this.committed = initial ? Uint8Array.from(initial) : new Uint8Array(blocks);
  }
  commit = async (blocks: number[]): Promise<void> => {
    await tick(this.r, 2);
    if (this.crashed) return new Promise<void>(() => {}); // never answers: the process is gone
    for (const b of blocks) this.committed[b] = 1;
    this.commits++;
    await tick(this.r, 2); // the flush of the transaction
  };
}

// ------------------------------------------------------------------ files

export function sha256File(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
  try {
    for (let pos = 0; ; ) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Compares two files; returns the first differing offset or -1. */
export function firstDifference(a: string, b: string): number {
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  const ba = Buffer.allocUnsafe(4 * 1024 * 1024);
  const bb = Buffer.allocUnsafe(4 * 1024 * 1024);
  try {
    const sa = fs.fstatSync(fa).size;
    const sb = fs.fstatSync(fb).size;
    for (let pos = 0; pos < Math.min(sa, sb); pos += ba.length) {
      const na = fs.readSync(fa, ba, 0, ba.length, pos);
      const nb = fs.readSync(fb, bb, 0, bb.length, pos);
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) {
        for (let i = 0; i < Math.min(na, nb); i++) if (ba[i] !== bb[i]) return pos + i;
        return pos + Math.min(na, nb);
      }
    }
    return sa === sb ? -1 : Math.min(sa, sb);
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

/**
 * A sparse image of `size` bytes with `extents` runs of random data scattered in it
 * (4 KiB-aligned, 4 KiB to maxExtent bytes each). Returns the data extents.
 */
export function makeSparseImage(file: string, size: number, extents: number, maxExtent: number, seed: number): { offset: number; length: number }[] {
  const r = rng(seed);
  const fd = fs.openSync(file, 'w');
  const out: { offset: number; length: number }[] = [];
  try {
    fs.ftruncateSync(fd, size);
    for (let i = 0; i < extents; i++) {
      const length = randInt(r, 1, Math.max(1, Math.floor(maxExtent / 4096))) * 4096;
      const offset = Math.min(size - length, randInt(r, 0, Math.floor(size / 4096) - 1) * 4096);
      fs.writeSync(fd, randomBytes(length), 0, length, offset);
      out.push({ offset, length });
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

export function tmpDir(t: ExecutionContext, prefix = 'bg-instant-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// ------------------------------------------------------------------ CLI

export interface CliOut {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

export function bg(dataDir: string, args: string[]): Promise<CliOut> {
  const start = process.hrtime.bigint();
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, '--data-dir', dataDir, ...args], { maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr, ms });
    });
  });
}

export async function bgJson<T = Record<string, unknown>>(dataDir: string, args: string[]): Promise<T> {
  const r = await bg(dataDir, ['-f', 'json', ...args]);
  if (r.code !== 0) throw new Error(`blockgate ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

export function run(cmd: string, args: string[], timeoutMs = 60000): Promise<CliOut> {
  const start = process.hrtime.bigint();
  return new Promise((resolve) => {
    execFile(cmd, args, { maxBuffer: 64 * 1024 * 1024, timeout: timeoutMs }, (err, stdout, stderr) => {
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr, ms });
    });
  });
}

// ------------------------------------------------------------------ daemon

export interface Daemon {
  child: ChildProcess;
  pid: number;
  port: number;
  socket: string;
  log: string[];
  exited: Promise<void>;
  uri(name: string): string;
  unixUri(name: string): string;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** starts `blockgate serve` on a free port and a unix socket in dataDir; killed by PID on teardown */
export async function startDaemon(t: ExecutionContext, dataDir: string): Promise<Daemon> {
  const socket = path.join(dataDir, 'nbd.sock');
  const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, 'serve', '--nbd-port', '0', '--nbd-socket', socket], { stdio: ['ignore', 'ignore', 'pipe'] });
  const pid = child.pid!;
  let alive = true;
  const exited = new Promise<void>((resolve) => child.on('exit', () => ((alive = false), resolve())));
  t.teardown(() => {
    if (alive) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  });
  const log: string[] = [];
  const port = await waitListening(child, log);
  return {
    child,
    pid,
    port,
    socket,
    log,
    exited,
    uri: (name) => `nbd://127.0.0.1:${port}/${name}`,
    unixUri: (name) => `nbd+unix:///${name}?socket=${socket}`,
    kill: async (signal = 'SIGTERM') => {
      if (alive) process.kill(pid, signal);
      await exited;
    },
  };
}

// ------------------------------------------------------------------ libnbd guest

export const SYSTEM_PYTHON = '/usr/bin/python3';

/** the guest: one libnbd connection; one JSON command per line in, one JSON answer per line out */
const GUEST_PY = String.raw`
import sys, json, base64, hashlib, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
out = sys.stdout
out.write(json.dumps({"ok": True, "size": h.get_size(), "trim": h.can_trim(), "fua": h.can_fua(), "zero": h.can_zero(), "multi": h.can_multi_conn()}) + "\n")
out.flush()
for line in sys.stdin:
    c = json.loads(line)
    op = c["op"]
    try:
        r = {"ok": True}
        if op == "read":
            d = h.pread(c["len"], c["off"])
            r["sha"] = hashlib.sha256(d).hexdigest()
            if c.get("data"):
                r["data"] = base64.b64encode(d).decode()
        elif op == "write":
            h.pwrite(base64.b64decode(c["data"]), c["off"], nbd.CMD_FLAG_FUA if c.get("fua") else 0)
        elif op == "trim":
            h.trim(c["len"], c["off"], nbd.CMD_FLAG_FUA if c.get("fua") else 0)
        elif op == "zero":
            h.zero(c["len"], c["off"], nbd.CMD_FLAG_FUA if c.get("fua") else 0)
        elif op == "flush":
            h.flush()
        elif op == "quit":
            h.shutdown()
            out.write(json.dumps(r) + "\n")
            out.flush()
            break
    except nbd.Error as e:
        r = {"ok": False, "error": str(e.string), "errno": e.errno}
    except Exception as e:
        r = {"ok": False, "error": repr(e)}
    out.write(json.dumps(r) + "\n")
    out.flush()
`;

export interface GuestAnswer {
  ok: boolean;
  error?: string;
  sha?: string;
  data?: string;
  size?: number;
  trim?: boolean;
  fua?: boolean;
}

export class Guest {
  private readonly child: ChildProcess;
  private readonly waiting: ((a: GuestAnswer) => void)[] = [];
  private closed = false;
  private stderr = '';
  ready: Promise<GuestAnswer>;

  constructor(t: ExecutionContext, uri: string) {
    this.child = spawn(SYSTEM_PYTHON, ['-c', GUEST_PY, uri], { stdio: ['pipe', 'pipe', 'pipe'] });
    const pid = this.child.pid!;
    t.teardown(() => {
      if (!this.closed) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    });
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    const rl = createInterface({ input: this.child.stdout! });
    rl.on('line', (line) => this.waiting.shift()?.(JSON.parse(line) as GuestAnswer));
    this.child.on('exit', () => {
      this.closed = true;
      for (const w of this.waiting.splice(0)) w({ ok: false, error: `guest exited: ${this.stderr.slice(-500)}` });
    });
    this.child.stdin!.on('error', () => undefined);
    this.ready = new Promise((resolve) => this.waiting.push(resolve));
  }

  call(cmd: Record<string, unknown>): Promise<GuestAnswer> {
    if (this.closed) return Promise.resolve({ ok: false, error: `guest exited: ${this.stderr.slice(-500)}` });
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.child.stdin!.write(JSON.stringify(cmd) + '\n');
    });
  }

  read(off: number, len: number, data = false): Promise<GuestAnswer> {
    return this.call({ op: 'read', off, len, data });
  }
  write(off: number, data: Buffer, fua = false): Promise<GuestAnswer> {
    return this.call({ op: 'write', off, data: data.toString('base64'), fua });
  }
  trim(off: number, len: number): Promise<GuestAnswer> {
    return this.call({ op: 'trim', off, len });
  }
  zero(off: number, len: number): Promise<GuestAnswer> {
    return this.call({ op: 'zero', off, len });
  }
  flush(): Promise<GuestAnswer> {
    return this.call({ op: 'flush' });
  }
  async close(): Promise<void> {
    if (!this.closed) {
      await this.call({ op: 'quit' });
      this.child.stdin!.end();
    }
    if (!this.closed) await new Promise<void>((r) => this.child.once('exit', () => r()));
  }
  kill(): void {
    if (!this.closed) this.child.kill('SIGKILL');
  }
}

export const shaHex = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

// ------------------------------------------------------------------ scenario helpers

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = 60000, everyMs = 100): Promise<T> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export interface SessionJson {
  id: string;
  status: string;
  export_name: string;
  uri: string | null;
  unix_uri: string | null;
  blocks_owned: number;
  blocks_durable: number;
  blocks_total: number;
  percent: number;
  bytes_copied: number;
  rate_bps: number;
  resumes: number;
  attached: boolean;
  status_reason: string | null;
  served_by_pid: number | null;
}

export const showSession = (dataDir: string, ref: string): Promise<SessionJson> => bgJson<SessionJson>(dataDir, ['restore', 'show', ref]);

/** a data directory with a small chunk size and quick commits, a source volume from `image`, and its full backup */
export async function preparedBackup(dir: string, image: string, opts: { chunkSize: number; syncIntervalMs?: number }): Promise<{ data: string; backupId: string }> {
  const data = path.join(dir, 'data');
  fs.mkdirSync(data, { recursive: true });
  fs.writeFileSync(path.join(data, 'blockgate.json'), JSON.stringify({ chunkSize: opts.chunkSize, codec: 'lz4', instant: { syncIntervalMs: opts.syncIntervalMs ?? 250 } }));
  await bgJson(data, ['volume', 'create', '--name', 'src', '--file', image]);
  const b = await bgJson<{ id: string; status: string }>(data, ['backup', 'create', 'src', '--name', 'full']);
  if (b.status !== 'available') throw new Error(`backup is ${b.status}`);
  return { data, backupId: b.id };
}

/** reads [off, off+len) of a file */
export function preadFile(file: string, off: number, len: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(len);
    fs.readSync(fd, buf, 0, len, off);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

export function pwriteFile(file: string, off: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, data, 0, data.length, off);
  } finally {
    fs.closeSync(fd);
  }
}
