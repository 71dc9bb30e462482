/**
 * Reply writers: simple replies when structured replies were not negotiated, structured
 * chunks otherwise. Each reply goes out as one `sendv` call so it is contiguous on the wire;
 * data buffers are passed through without copying.
 */
import type { ReadPart } from './extents.js';
import {
  CMD,
  ERR,
  encodeChunkBlockStatus,
  encodeChunkDataHeader,
  encodeChunkError,
  encodeChunkHole,
  encodeChunkNone,
  encodeSimpleReply,
  errnoOf,
  messageOf,
  type Request,
} from './protocol.js';

export interface ReplySink {
  sendv(bufs: Buffer[]): boolean;
}

export class Replier {
  constructor(
    private readonly sink: ReplySink,
    private readonly structured: boolean,
  ) {}

  /** success without payload */
  ok(req: Request): void {
    if (this.structured && req.type === CMD.READ) this.sink.sendv([encodeChunkNone(req)]);
    else this.sink.sendv([encodeSimpleReply(req, 0)]);
  }

  /** a whole read as one piece of data */
  data(req: Request, data: Buffer): void {
    if (this.structured) this.sink.sendv([encodeChunkDataHeader(req, true, req.offset, data.length), data]);
    else this.sink.sendv([encodeSimpleReply(req, 0), data]);
  }

  error(req: Request, errno: number, message: string): void {
    if (this.structured) this.sink.sendv([encodeChunkError(req, true, errno || ERR.EIO, message)]);
    else this.sink.sendv([encodeSimpleReply(req, errno || ERR.EIO)]);
  }

  /** a structured read split into data and hole chunks (possibly with failed parts) */
  readChunks(req: Request, parts: ReadPart[]): void {
    if (!this.structured) throw new Error('readChunks needs structured replies');
    const bufs: Buffer[] = [];
    const failed = parts.filter((p) => p.error !== undefined);
    const content = parts.filter((p) => p.error === undefined);
    content.forEach((p, i) => {
      const done = failed.length === 0 && i === content.length - 1;
      if (p.hole) bufs.push(encodeChunkHole(req, done, p.offset, p.length));
      else {
        bufs.push(encodeChunkDataHeader(req, done, p.offset, p.data!.length));
        bufs.push(p.data!);
      }
    });
    failed.forEach((p, i) => {
      bufs.push(encodeChunkError(req, i === failed.length - 1, errnoOf(p.error), messageOf(p.error), p.offset));
    });
    if (bufs.length === 0) bufs.push(encodeChunkNone(req));
    this.sink.sendv(bufs);
  }

  blockStatus(req: Request, contextId: number, extents: ReadonlyArray<{ length: number; flags: number }>): void {
    this.sink.sendv([encodeChunkBlockStatus(req, contextId, extents)]);
  }
}
