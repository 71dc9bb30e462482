/**
 * Reading the embedded event log (gateway/events/log.ts) from a position onwards: what
 * `blockgate events [--follow]` prints and what the Kafka sink ships. Only whole lines with a
 * good checksum come out; a line still being written is left for the next read; segments
 * removed by rotation before they were read are reported (`lostSegments`).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { BlockgateEvent } from './bus.js';
import { type LogPosition, decodeLine, listSegments, segmentName } from './log.js';

const READ_BYTES = 1024 * 1024;

export interface TailItem {
  event: BlockgateEvent;
  /** the position just after this event's line */
  next: LogPosition;
}

export class LogTail {
  pos: LogPosition;
  /** lines that were not valid events (torn, corrupt, foreign) */
  skipped = 0;
  /** segments that were removed before this reader got to them */
  lostSegments: number[] = [];
  private fd = -1;
  private fdSegment = -1;
  private readonly buf = Buffer.alloc(READ_BYTES);

  constructor(
    readonly dir: string,
    from: LogPosition | 'start' = 'start',
  ) {
    this.pos = from === 'start' ? { segment: listSegments(dir)[0] ?? 1, offset: 0 } : { ...from };
  }

  /** up to `max` events after the current position; the position moves past them */
  read(max = 1000): TailItem[] {
    const out: TailItem[] = [];
    for (let guard = 0; out.length < max && guard < 10_000; guard++) {
      if (!this.openCurrent()) break;
      const size = fs.fstatSync(this.fd).size;
      if (size > this.pos.offset) {
        const n = fs.readSync(this.fd, this.buf, 0, Math.min(READ_BYTES, size - this.pos.offset), this.pos.offset);
        let start = 0;
        let nl = this.buf.indexOf(0x0a, 0);
        if (nl < 0 || nl >= n) {
          if (n === READ_BYTES) {
            // a "line" longer than anything we write: not ours, skip it whole
            this.skipped++;
            this.pos = { segment: this.pos.segment, offset: this.pos.offset + n };
            continue;
          }
          if (this.moveOn(true)) continue; // a torn tail in a segment that is done with
          break;
        }
        while (nl >= 0 && nl < n && out.length < max) {
          const line = this.buf.toString('utf8', start, nl);
          const off = this.pos.offset + nl + 1;
          const event = line ? decodeLine(line) : null;
          if (event) out.push({ event, next: { segment: this.pos.segment, offset: off } });
          else if (line) this.skipped++;
          start = nl + 1;
          nl = this.buf.indexOf(0x0a, start);
        }
        this.pos = { segment: this.pos.segment, offset: this.pos.offset + start };
        continue;
      }
      if (!this.moveOn(false)) break;
    }
    return out;
  }

  /** at the end of the current segment: go to the next one if there is one */
  private moveOn(partialTail: boolean): boolean {
    const next = listSegments(this.dir).find((s) => s > this.pos.segment);
    if (next === undefined) return false;
    if (partialTail) this.skipped++;
    this.pos = { segment: next, offset: 0 };
    return true;
  }

  /** opens the segment of the position; one removed meanwhile is recorded as lost */
  private openCurrent(): boolean {
    if (this.fd >= 0 && this.fdSegment === this.pos.segment) return true;
    this.closeFd();
    for (;;) {
      try {
        this.fd = fs.openSync(path.join(this.dir, segmentName(this.pos.segment)), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
        this.fdSegment = this.pos.segment;
        return true;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      const segs = listSegments(this.dir);
      const next = segs.find((s) => s > this.pos.segment);
      if (next === undefined) return false; // not made yet
      if (segs[0]! > this.pos.segment || this.pos.offset > 0) this.lostSegments.push(this.pos.segment);
      this.pos = { segment: next, offset: 0 };
    }
  }

  private closeFd(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
    this.fdSegment = -1;
  }

  close(): void {
    this.closeFd();
  }
}

/** `backup.*` style patterns: `*` is any run of characters; several separated by commas */
export function typeMatcher(patterns: string | undefined): (type: string) => boolean {
  if (!patterns) return () => true;
  const res = patterns
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)
    .map((p) => new RegExp(`^${p.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`));
  return (type) => res.some((r) => r.test(type));
}
