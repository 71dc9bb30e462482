/**
 * The embedded event log: every event of the data dir, appended to `DATA_DIR/events/`, the
 * default sink (and Kafka's durable queue: gateway/events/kafka.ts ships from it).
 *
 * - Append-only segments `NNNNNNNNNNNN.log` (dir 0700, files 0600), one event per line:
 *   `JSON \t crc32-hex \n`. The daemon and CLI processes of one data dir append to the same
 *   segment with O_APPEND, one write(2) per line, so lines never interleave.
 * - Size-bounded: a segment past `segmentBytes` is closed and the next one started; the oldest
 *   segments are removed while the log is over `maxBytes` (a segment Kafka has not shipped yet
 *   is counted and reported as lost when it has to go).
 * - Crash-safe: a line is whole or it is not there. A torn tail (a process killed mid-line, a
 *   power cut) is cut off when a writer opens the log, and any line whose checksum fails is
 *   skipped by readers. Lines are in the page cache when `write` returns (a killed process loses
 *   nothing); they are fdatasync'ed within `syncMs`, and at close.
 */
import fs from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import type { BlockgateEvent, EventSink } from './bus.js';

export const EVENTS_DIR = 'events';
const SEGMENT_RE = /^(\d{12})\.log$/;

export interface EventLogOptions {
  /** the whole log, all segments (default 64 MiB) */
  maxBytes: number;
  /** one segment (default maxBytes / 8) */
  segmentBytes?: number;
  /** fdatasync at most this long after a write (default 1000 ms) */
  syncMs?: number;
  /** a segment is removed before it was shipped: `lines` events lost */
  onLoss?: (segment: number, lines: number) => void;
  /** a write or sync failed (the event is counted as lost by the bus) */
  onError?: (e: Error) => void;
}

/** A place in the log: a segment and a byte offset in it (the start of the next line). */
export interface LogPosition {
  segment: number;
  offset: number;
}

export const segmentName = (n: number): string => `${String(n).padStart(12, '0')}.log`;

/** the segment numbers in `dir`, oldest first */
export function listSegments(dir: string): number[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  return names
    .map((n) => SEGMENT_RE.exec(n))
    .filter((m): m is RegExpExecArray => !!m)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
}

export function encodeLine(event: BlockgateEvent): string {
  const json = JSON.stringify(event);
  return `${json}\t${crc32(json).toString(16).padStart(8, '0')}\n`;
}

/** the event of one line (without its newline), or null if it is torn or not one of ours */
export function decodeLine(line: string): BlockgateEvent | null {
  const tab = line.lastIndexOf('\t');
  if (tab < 0 || line.length - tab !== 9) return null;
  const json = line.slice(0, tab);
  if (crc32(json).toString(16).padStart(8, '0') !== line.slice(tab + 1)) return null;
  try {
    const e = JSON.parse(json) as BlockgateEvent;
    return e && typeof e === 'object' && typeof e.type === 'string' && typeof e.id === 'string' ? e : null;
  } catch {
    return null;
  }
}

/** the cursor of the Kafka shipper, if there is one: segments at or after it are not shipped yet */
export const KAFKA_CURSOR = 'kafka-cursor.json';
export function readCursor(dir: string): LogPosition | null {
  try {
    const c = JSON.parse(fs.readFileSync(path.join(dir, KAFKA_CURSOR), 'utf8')) as LogPosition;
    return Number.isInteger(c.segment) && Number.isInteger(c.offset) ? c : null;
  } catch {
    return null;
  }
}

/** Cuts a torn last line off a segment (whatever follows its last newline). */
function dropTornTail(file: string): number {
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW);
  try {
    const size = fs.fstatSync(fd).size;
    if (size === 0) return 0;
    const last = Buffer.alloc(1);
    fs.readSync(fd, last, 0, 1, size - 1);
    if (last[0] === 0x0a) return 0;
    // look back for the last newline, 64 KiB at a time
    const buf = Buffer.alloc(64 * 1024);
    let end = size;
    while (end > 0) {
      const start = Math.max(0, end - buf.length);
      const n = fs.readSync(fd, buf, 0, end - start, start);
      const i = buf.subarray(0, n).lastIndexOf(0x0a);
      if (i >= 0) {
        end = start + i + 1;
        break;
      }
      end = start;
    }
    // another writer may have completed a line meanwhile: then the tail is not torn
    if (fs.fstatSync(fd).size !== size) return 0;
    fs.ftruncateSync(fd, end);
    fs.fsyncSync(fd);
    return size - end;
  } finally {
    fs.closeSync(fd);
  }
}

export class EventLog implements EventSink {
  private fd = -1;
  private segment = 0;
  private dirty = false;
  private timer?: NodeJS.Timeout;
  private syncing = false;
  readonly maxBytes: number;
  readonly segmentBytes: number;
  /** bytes of a torn tail dropped when the log was opened */
  droppedTail = 0;
  written = 0;

  constructor(
    readonly dir: string,
    private readonly opts: EventLogOptions,
  ) {
    this.maxBytes = opts.maxBytes;
    this.segmentBytes = Math.max(4096, Math.min(opts.segmentBytes ?? Math.floor(opts.maxBytes / 8), opts.maxBytes));
  }

  /** opens the newest segment for appending (made on first use), dropping a torn tail */
  private open(): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const segs = listSegments(this.dir);
    const newest = segs.at(-1);
    if (newest !== undefined) this.droppedTail += dropTornTail(path.join(this.dir, segmentName(newest)));
    this.openSegment(newest ?? 1);
  }

  private openSegment(n: number): void {
    const { O_WRONLY, O_APPEND, O_CREAT, O_NOFOLLOW } = fs.constants;
    const fd = fs.openSync(path.join(this.dir, segmentName(n)), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW, 0o600);
    if (this.fd >= 0) {
      try {
        fs.fdatasyncSync(this.fd);
      } finally {
        fs.closeSync(this.fd);
      }
    }
    this.fd = fd;
    this.segment = n;
  }

  write(event: BlockgateEvent): void {
    if (this.fd < 0) this.open();
    const line = Buffer.from(encodeLine(event));
    if (fs.fstatSync(this.fd).size + line.length > this.segmentBytes) this.rotate();
    fs.writeSync(this.fd, line);
    this.written++;
    this.dirty = true;
    this.timer ??= setTimeout(() => this.sync(), this.opts.syncMs ?? 1000);
    this.timer.unref?.();
  }

  /** moves to the newest segment with room (another process may have started one), then bounds the log */
  private rotate(): void {
    let n = Math.max(this.segment, listSegments(this.dir).at(-1) ?? 0);
    if (n === this.segment || fs.statSync(path.join(this.dir, segmentName(n))).size >= this.segmentBytes) n++;
    this.openSegment(n);
    this.bound();
  }

  /** removes the oldest segments while the log is larger than maxBytes (never the one being written) */
  private bound(): void {
    const segs = listSegments(this.dir);
    const sizes = segs.map((s) => {
      try {
        return fs.statSync(path.join(this.dir, segmentName(s))).size;
      } catch {
        return 0;
      }
    });
    let total = sizes.reduce((a, b) => a + b, 0);
    const cursor = readCursor(this.dir);
    for (let i = 0; i < segs.length && total > this.maxBytes; i++) {
      const s = segs[i]!;
      if (s >= this.segment) break;
      const file = path.join(this.dir, segmentName(s));
      if (cursor && cursor.segment <= s) this.opts.onLoss?.(s, countLines(file, s === cursor.segment ? cursor.offset : 0));
      fs.rmSync(file, { force: true });
      total -= sizes[i]!;
    }
  }

  private sync(): void {
    this.timer = undefined;
    if (!this.dirty || this.fd < 0 || this.syncing) return;
    this.dirty = false;
    this.syncing = true;
    const fd = this.fd;
    fs.fdatasync(fd, (err) => {
      this.syncing = false;
      if (err && err.code !== 'EBADF') this.opts.onError?.(err);
    });
  }

  /** where the next line will go (a reader that starts here sees only later events) */
  end(): LogPosition {
    if (this.fd < 0) this.open();
    return { segment: this.segment, offset: fs.fstatSync(this.fd).size };
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.fd < 0) return;
    const fd = this.fd;
    this.fd = -1;
    try {
      if (this.dirty) fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }
}

/** the valid lines of a segment from `offset` */
function countLines(file: string, offset: number): number {
  let n = 0;
  try {
    for (const line of fs.readFileSync(file).subarray(offset).toString('utf8').split('\n')) if (decodeLine(line)) n++;
  } catch {
    /* gone already */
  }
  return n;
}
