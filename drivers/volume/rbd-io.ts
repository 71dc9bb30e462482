/**
 * Random access to an RBD image as a VolumeDevice, for what needs it (instant-restore
 * targets, the generic restore path): a long-lived python3-rbd helper (Debian python3-rbd,
 * which comes with ceph-common) holds the image open and serves requests over its
 * stdin/stdout, one at a time, in order:
 *
 *   request   u8 op ('R' read, 'W' write, 'Z' write zeroes, 'T' discard, 'F' flush,
 *             'C' create snapshot, 'X' remove snapshot, 'L' list snapshots),
 *             u8 flags (bit 0: FUA), 6 bytes padding, le64 offset, le64 length,
 *             then `length` bytes for 'W' (data) and 'C'/'X' (the snapshot name)
 *   response  le32 status (0, or -errno), le32 length, then `length` bytes (the data of
 *             'R', or an error message)
 *
 * The first response, before any request, is the hello: status 0 and the le64 image size, or
 * the error that kept the image from opening. Backups never come this way (they read
 * `rbd export-diff` of a snapshot, see rbd.ts).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import { BlockDeviceError, type Extent, type ZeroOptions } from '../../blockdev/types.js';
import { checkRange } from '../../blockdev/filter.js';
import type { VolumeDevice } from './types.js';

const HELPER = String.raw`
import errno, json, struct, sys
inp = sys.stdin.buffer
out = sys.stdout.buffer

def reply(status, payload=b''):
    out.write(struct.pack('<iI', status, len(payload)))
    if payload:
        out.write(payload)
    out.flush()

def fail(e):
    code = getattr(e, 'errno', None)
    if not isinstance(code, int) or code == 0:
        code = errno.EIO
    reply(-abs(code), (type(e).__name__ + ': ' + str(e)).encode('utf-8', 'replace')[:2000])

def main():
    conf, user, pool, image, mode = sys.argv[1:6]
    try:
        import rados, rbd
    except ImportError as e:
        reply(-errno.ENOPKG, ('python3-rbd is not installed (Debian packages python3-rados python3-rbd): ' + str(e)).encode())
        return
    try:
        cluster = rados.Rados(conffile=conf, rados_id=(user or None))
        # a cluster that stops answering fails requests instead of hanging them for ever
        cluster.conf_set('rados_mon_op_timeout', '60')
        cluster.conf_set('rados_osd_op_timeout', '120')
        cluster.connect(timeout=30)
        ioctx = cluster.open_ioctx(pool)
        img = rbd.Image(ioctx, image, read_only=(mode == 'read'))
    except Exception as e:
        fail(e)
        return
    reply(0, struct.pack('<Q', img.size()))
    try:
        while True:
            h = inp.read(24)
            if len(h) < 24:
                break
            op, flags, off, ln = struct.unpack('<BB6xQQ', h)
            data = None
            if op in (0x57, 0x43, 0x58):
                data = inp.read(ln)
                if len(data) < ln:
                    break
            try:
                if op == 0x52:
                    reply(0, img.read(off, ln))
                    continue
                if op == 0x57:
                    img.write(data, off)
                elif op == 0x5a:
                    img.write_zeroes(off, ln)
                elif op == 0x54:
                    img.discard(off, ln)
                elif op == 0x46:
                    img.flush()
                elif op == 0x43:
                    img.create_snap(data.decode('utf-8'))
                elif op == 0x58:
                    try:
                        img.remove_snap(data.decode('utf-8'))
                    except rbd.ImageNotFound:
                        pass
                elif op == 0x4c:
                    reply(0, json.dumps([{'name': s['name'], 'size': s['size']} for s in img.list_snaps()]).encode())
                    continue
                else:
                    reply(-errno.EINVAL, b'unknown request')
                    continue
                if flags & 1 and op != 0x46:
                    img.flush()
                reply(0)
            except Exception as e:
                fail(e)
    finally:
        img.close()
        ioctx.close()
        cluster.shutdown()

main()
`;

const OP = { read: 0x52, write: 0x57, zero: 0x5a, trim: 0x54, flush: 0x46, snapCreate: 0x43, snapRemove: 0x58, snapList: 0x4c } as const;

interface Pending {
  resolve(b: Buffer): void;
  reject(e: Error): void;
  what: string;
}

function errnoName(status: number): BlockDeviceError['errno'] {
  switch (-status) {
    case 28:
      return 'ENOSPC';
    case 30:
      return 'EROFS';
    case 22:
      return 'EINVAL';
    case 1:
    case 13:
      return 'EPERM';
    case 95:
      return 'ENOTSUP';
    default:
      return 'EIO';
  }
}

export class RbdImageDevice implements VolumeDevice {
  readonly sparseFile = false;
  /** one helper serialises every request: all connections see the same image */
  readonly canMultiConn = true;
  readonly readOnly: boolean;
  size = 0;
  private readonly queue: Pending[] = [];
  private chunks: Buffer[] = [];
  private buffered = 0;
  private dead: Error | null = null;
  private stderr = '';
  private closing = false;
  private readonly exited: Promise<void>;

  private constructor(
    private readonly child: ChildProcessWithoutNullStreams,
    readonly spec: string,
    mode: 'read' | 'write' | 'control',
  ) {
    this.readOnly = mode === 'read';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (this.stderr = (this.stderr + d).slice(-8000)));
    child.stdout.on('data', (d: Buffer) => this.onData(d));
    child.stdin.on('error', () => {}); // EPIPE when the helper died: its exit says why
    this.exited = new Promise((resolve) => {
      child.on('error', (e) => {
        this.die(new BlockDeviceError('EIO', `cannot start the RBD helper for ${spec}: ${e.message}`));
        resolve();
      });
      child.on('close', (code, signal) => {
        const tail = this.stderr.trim().split('\n').at(-1) ?? '';
        this.die(new BlockDeviceError('EIO', `the RBD helper for ${spec} ended (${code ?? signal})${tail ? `: ${tail}` : ''}`));
        resolve();
      });
    });
  }

  /**
   * Opens the image: 'read' read-only, 'write' read-write; 'control' is read-write too but
   * meant for snapshot operations only (one cluster connection for a backup's snapshot
   * create, list and remove, much cheaper than an `rbd` run each).
   */
  static async open(pool: string, image: string, mode: 'read' | 'write' | 'control', o: { conf?: string; user?: string }): Promise<RbdImageDevice> {
    const py = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
    const child = spawn(py, ['-c', HELPER, o.conf ?? '', o.user ?? '', pool, image, mode], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, PYTHONUNBUFFERED: '1' },
    });
    const dev = new RbdImageDevice(child, `${pool}/${image}`, mode);
    let hello: Buffer;
    try {
      hello = await dev.expect(`open ${pool}/${image}`);
    } catch (e) {
      child.kill('SIGTERM');
      await dev.exited;
      const msg = (e as Error).message;
      throw new Error(/ImageNotFound|No such file/.test(msg) ? `RBD image ${pool}/${image} does not exist` : `cannot open RBD image ${pool}/${image}: ${msg}`);
    }
    dev.size = Number(hello.readBigUInt64LE(0));
    return dev;
  }

  private die(e: Error): void {
    if (this.dead) return;
    this.dead = this.closing ? new BlockDeviceError('ESHUTDOWN', `RBD image ${this.spec} is closed`) : e;
    for (const p of this.queue.splice(0)) p.reject(this.dead);
  }

  private onData(d: Buffer): void {
    this.chunks.push(d);
    this.buffered += d.length;
    for (;;) {
      if (this.buffered < 8) return;
      if (this.chunks[0]!.length < 8) this.chunks = [Buffer.concat(this.chunks)];
      const head = this.chunks[0]!;
      const status = head.readInt32LE(0);
      const len = head.readUInt32LE(4);
      if (this.buffered < 8 + len) return;
      const all = this.chunks.length === 1 ? head : Buffer.concat(this.chunks);
      const payload = Buffer.from(all.subarray(8, 8 + len));
      const rest = all.subarray(8 + len);
      this.chunks = rest.length ? [rest] : [];
      this.buffered = rest.length;
      const p = this.queue.shift();
      if (!p) continue;
      if (status === 0) p.resolve(payload);
      else p.reject(new BlockDeviceError(errnoName(status), `RBD ${p.what} on ${this.spec}: ${payload.toString('utf8')}`));
    }
  }

  private expect(what: string): Promise<Buffer> {
    if (this.dead) return Promise.reject(this.dead);
    return new Promise((resolve, reject) => this.queue.push({ resolve, reject, what }));
  }

  private request(op: number, offset: number, length: number, what: string, data?: Buffer, fua = false): Promise<Buffer> {
    if (this.dead) return Promise.reject(this.dead);
    const h = Buffer.alloc(24);
    h[0] = op;
    h[1] = fua ? 1 : 0;
    h.writeBigUInt64LE(BigInt(offset), 8);
    h.writeBigUInt64LE(BigInt(length), 16);
    const p = this.expect(what);
    this.child.stdin.write(h);
    if (data && data.length) this.child.stdin.write(data);
    return p;
  }

  private check(offset: number, length: number): void {
    checkRange(this.size, offset, length, `the RBD image ${this.spec}`);
  }

  private writable(): void {
    if (this.readOnly) throw new BlockDeviceError('EROFS', `RBD image ${this.spec} is open read-only`);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    if (length === 0) return Buffer.alloc(0);
    const b = await this.request(OP.read, offset, length, `read ${offset}+${length}`);
    if (b.length !== length) throw new BlockDeviceError('EIO', `RBD read ${offset}+${length} on ${this.spec} returned ${b.length} bytes`);
    return b;
  }

  async readInto(buf: Buffer, offset: number): Promise<void> {
    (await this.read(offset, buf.length)).copy(buf);
  }

  async write(offset: number, data: Buffer, fua?: boolean): Promise<void> {
    this.writable();
    this.check(offset, data.length);
    if (data.length === 0) return;
    await this.request(OP.write, offset, data.length, `write ${offset}+${data.length}`, data, fua);
  }

  async zero(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.writable();
    this.check(offset, length);
    if (length === 0) return;
    await this.request(OP.zero, offset, length, `write-zeroes ${offset}+${length}`, undefined, opts?.fua);
  }

  async trim(offset: number, length: number, fua?: boolean): Promise<void> {
    this.writable();
    this.check(offset, length);
    if (length === 0) return;
    await this.request(OP.trim, offset, length, `discard ${offset}+${length}`, undefined, fua);
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.request(OP.flush, 0, 0, 'flush');
  }

  async createSnapshot(name: string): Promise<void> {
    await this.request(OP.snapCreate, 0, Buffer.byteLength(name), `snapshot create ${name}`, Buffer.from(name));
  }

  /** removes a snapshot; one that does not exist is not an error */
  async removeSnapshot(name: string): Promise<void> {
    await this.request(OP.snapRemove, 0, Buffer.byteLength(name), `snapshot remove ${name}`, Buffer.from(name));
  }

  async listSnapshots(): Promise<Array<{ name: string; size: number }>> {
    return JSON.parse((await this.request(OP.snapList, 0, 0, 'snapshot list')).toString('utf8')) as Array<{ name: string; size: number }>;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length: Math.min(length, this.size - offset), hole: false, zero: false }];
  }

  async close(): Promise<void> {
    if (this.closing) return this.exited;
    this.closing = true;
    // requests already sent are answered before the helper sees the end of its input
    const pending = this.queue.map((p) => new Promise<void>((r) => {
      const { resolve, reject } = p;
      p.resolve = (b) => (resolve(b), r());
      p.reject = (e) => (reject(e), r());
    }));
    this.child.stdin.end();
    await Promise.all(pending);
    const t = setTimeout(() => this.child.kill('SIGTERM'), 30_000);
    await this.exited;
    clearTimeout(t);
  }
}
