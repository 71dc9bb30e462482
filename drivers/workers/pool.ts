/**
 * A small pool of worker threads for chunk hashing, compression and verification, so a
 * backup or restore uses every core and the event loop stays free for I/O.
 *
 * A worker that dies (an uncaught error, out of memory, an exit) fails only the task it was
 * running, with a WorkerDiedError; the queue goes on on the survivors, and a replacement is
 * spawned whenever tasks wait and the pool is below its size.
 */
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import type { CodecName } from '../codec.js';
import type { RepoKeys } from '../crypto.js';
import type { ChunkResult, ChunkTask } from './chunk-worker.js';

type DistOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
type Pending = { resolve: (r: ChunkResult & { ok: true }) => void; reject: (e: Error) => void };
type Task = { msg: ChunkTask; transfer: ArrayBuffer[]; pending: Pending };

export class WorkerDiedError extends Error {
  constructor(op: string, cause: string) {
    super(`chunk worker died during ${op}: ${cause}`);
    this.name = 'WorkerDiedError';
  }
}

export class ChunkWorkerPool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly queue: Task[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly busy = new Map<Worker, number>();
  private nextId = 1;
  private closed = false;

  private readonly ops = new Map<number, string>();

  /** `script`: the worker module (the chunk worker; tests give one that can be made to crash) */
  constructor(
    readonly size = Math.max(1, Math.min(os.availableParallelism(), 8)),
    private readonly script: URL = new URL('./chunk-worker.js', import.meta.url),
    /** an encrypted repository's keys: names are keyed, objects sealed and opened in the workers */
    private readonly keys: RepoKeys | null = null,
  ) {}

  private spawn(): Worker {
    const w = new Worker(this.script, { workerData: { keys: this.keys } });
    w.unref();
    w.on('message', (r: ChunkResult) => {
      const p = this.pending.get(r.id);
      this.pending.delete(r.id);
      this.ops.delete(r.id);
      this.busy.delete(w);
      if (p) {
        if (r.ok) p.resolve(r);
        else p.reject(Object.assign(new Error(r.error), { name: r.name }));
      }
      this.release(w);
    });
    w.on('error', (e: Error) => this.died(w, e.message));
    w.on('exit', (code) => this.died(w, `exited with code ${code}`));
    this.workers.push(w);
    return w;
  }

  /** a worker is gone: fail its task alone, and keep the queue moving */
  private died(w: Worker, why: string): void {
    const at = this.workers.indexOf(w);
    if (at < 0) return; // already handled (error, then exit)
    this.workers.splice(at, 1);
    const idle = this.idle.indexOf(w);
    if (idle >= 0) this.idle.splice(idle, 1);
    const id = this.busy.get(w);
    this.busy.delete(w);
    if (id !== undefined) {
      const p = this.pending.get(id);
      const op = this.ops.get(id) ?? 'a task';
      this.pending.delete(id);
      this.ops.delete(id);
      p?.reject(new WorkerDiedError(op, why));
    }
    if (this.closed) return;
    void w.terminate().catch(() => undefined);
    while (this.queue.length && this.workers.length < this.size) this.dispatch(this.spawn(), this.queue.shift()!);
  }

  private release(w: Worker): void {
    const next = this.queue.shift();
    if (next) this.dispatch(w, next);
    else this.idle.push(w);
  }

  private dispatch(w: Worker, t: Task): void {
    this.pending.set(t.msg.id, t.pending);
    this.ops.set(t.msg.id, t.msg.op);
    this.busy.set(w, t.msg.id);
    try {
      w.postMessage(t.msg, t.transfer);
    } catch (e) {
      // not sent (e.g. a buffer already transferred): this task fails, the worker is fine
      this.pending.delete(t.msg.id);
      this.ops.delete(t.msg.id);
      this.busy.delete(w);
      t.pending.reject(e as Error);
      this.release(w);
    }
  }

  private run(msg: DistOmit<ChunkTask, 'id'>, transfer: ArrayBuffer[]): Promise<ChunkResult & { ok: true }> {
    if (this.closed) return Promise.reject(new Error('worker pool closed'));
    return new Promise((resolve, reject) => {
      const task: Task = { msg: { ...msg, id: this.nextId++ } as ChunkTask, transfer, pending: { resolve, reject } };
      const w = this.idle.pop() ?? (this.workers.length < this.size ? this.spawn() : undefined);
      if (w) this.dispatch(w, task);
      else this.queue.push(task);
    });
  }

  /** SHA-256 (hex) and zero test of buf[0..length); buf is transferred and handed back. */
  async hash(buf: ArrayBuffer, length: number): Promise<{ buf: ArrayBuffer; digest: string; zero: boolean }> {
    const r = await this.run({ op: 'hash', buf, length }, [buf]);
    return { buf: r.buf!, digest: r.digest!, zero: r.zero! };
  }

  /**
   * Decodes neighbouring blobs of one pack in one task: the range (read by the worker from
   * `path`, or given as `object`), and per blob (offset in the range, stored length,
   * plaintext length, digest) its verified plaintext or its error.
   */
  async decodeRun(src: { path: string } | { object: Buffer }, offset: number, length: number, blobs: [number, number, number, string][]): Promise<(Buffer | Error)[]> {
    let msg: DistOmit<ChunkTask, 'id'>;
    const transfer: ArrayBuffer[] = [];
    if ('path' in src) {
      msg = { op: 'decodeRun', path: src.path, offset, length, blobs };
    } else {
      const ab = new ArrayBuffer(src.object.length);
      Buffer.from(ab).set(src.object);
      transfer.push(ab);
      msg = { op: 'decodeRun', object: ab, offset, length, blobs };
    }
    const r = await this.run(msg, transfer);
    const out: (Buffer | Error)[] = [];
    let at = 0;
    blobs.forEach(([, , plain], k) => {
      const err = r.errors![k]!;
      out.push(err ? Object.assign(new Error(err), { name: 'ChunkCorruptError' }) : Buffer.from(r.out!, at, plain));
      at += plain;
    });
    return out;
  }

  /** The digest of every `block`-sized block of buf[0..length) ('' for all-zero), in one task; buf is handed back. */
  async hashBlocks(buf: ArrayBuffer, length: number, block: number): Promise<{ buf: ArrayBuffer; digests: string[] }> {
    const r = await this.run({ op: 'hashBlocks', buf, length, block }, [buf]);
    return { buf: r.buf!, digests: r.digests! };
  }

  /**
   * Encodes several blocks of buf (offset, length, digest) as chunk objects in one task, laid
   * out one after the other in `out` (at least their lengths + OBJECT_OVERHEAD each).
   */
  async encodeBlocks(buf: ArrayBuffer, blocks: [number, number, string][], codec: CodecName, out: ArrayBuffer): Promise<{ buf: ArrayBuffer; out: ArrayBuffer; objects: { object: Buffer; codec: CodecName }[] }> {
    const r = await this.run({ op: 'encodeBlocks', buf, blocks, codec, out }, [buf, out]);
    const objects: { object: Buffer; codec: CodecName }[] = [];
    let at = 0;
    r.lengths!.forEach((n, k) => {
      objects.push({ object: Buffer.from(r.out!, at, n), codec: r.codecs![k]! });
      at += n;
    });
    return { buf: r.buf!, out: r.out!, objects };
  }

  /**
   * Encodes buf[0..length) as a chunk object into `out` (at least length + CHUNK_HEADER
   * bytes); both are transferred and handed back, so nothing is allocated per chunk.
   */
  async encode(buf: ArrayBuffer, length: number, codec: CodecName, out: ArrayBuffer, digest: string): Promise<{ buf: ArrayBuffer; out: ArrayBuffer; object: Buffer; codec: CodecName }> {
    const r = await this.run({ op: 'encode', buf, length, codec, out, digest }, [buf, out]);
    return { buf: r.buf!, out: r.out!, object: Buffer.from(r.out!, 0, r.outLength!), codec: r.codec! };
  }

  /** Decodes and verifies a chunk object; throws ChunkCorruptError on a mismatch. */
  async decode(object: Buffer, digest: string): Promise<Buffer> {
    // copy into a transferable buffer only when the object shares a pooled one
    let ab: ArrayBuffer;
    let offset = object.byteOffset;
    if (object.buffer instanceof ArrayBuffer && object.byteOffset === 0 && object.byteLength === object.buffer.byteLength) {
      ab = object.buffer;
    } else {
      ab = new ArrayBuffer(object.length);
      Buffer.from(ab).set(object);
      offset = 0;
    }
    const r = await this.run({ op: 'decode', object: ab, offset, length: object.length, digest }, [ab]);
    return Buffer.from(r.plain!);
  }

  /** Reads a chunk object from a local file (whole, or `length` bytes at `offset` of a pack), decodes and verifies it, all in the worker. */
  async decodeFile(path: string, digest: string, offset = 0, length = -1): Promise<Buffer> {
    const r = await this.run({ op: 'decodeFile', path, digest, offset, length }, []);
    return Buffer.from(r.plain!);
  }

  /**
   * Decodes and verifies object[0..length) into `out`; both buffers are transferred and
   * handed back. Returns the plaintext as a view of `out`.
   */
  async decodeInto(object: ArrayBuffer, length: number, digest: string, out: ArrayBuffer): Promise<{ object: ArrayBuffer; out: ArrayBuffer; plain: Buffer }> {
    const r = await this.run({ op: 'decode', object, offset: 0, length, digest, out }, [object, out]);
    return { object: r.buf!, out: r.out!, plain: Buffer.from(r.out!, 0, r.outLength!) };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.queue.splice(0)) t.pending.reject(new Error('worker pool closed'));
    const workers = this.workers.splice(0);
    this.idle.length = 0;
    for (const p of this.pending.values()) p.reject(new Error('worker pool closed'));
    this.pending.clear();
    this.busy.clear();
    await Promise.all(workers.map((w) => w.terminate()));
  }
}
