/**
 * NBD wire constants and encoders (NetworkBlockDevice doc/proto.md, fixed newstyle).
 * Every multi-byte field is big-endian. Nothing here does I/O.
 */
import { BlockDeviceError } from '../blockdev/types.js';

export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** handshake flags (server, 16 bits) and client flags (32 bits) */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

/** transmission flags */
export const TF = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const;

export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const CMD = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const CMD_FLAG = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

export const REPLY_FLAG_DONE = 1 << 0;

export const REPLY_TYPE = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;

export const ERR = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

export const BASE_ALLOCATION = 'base:allocation';
/** context id handed out for base:allocation by SET_META_CONTEXT */
export const BASE_ALLOCATION_ID = 1;

/** sizes of fixed wire structures */
export const REQUEST_HEADER_SIZE = 28;
export const OPTION_HEADER_SIZE = 16;
/** NBD strings (names, queries, messages) are limited to 4096 bytes */
export const MAX_STRING = 4096;
/** option payloads larger than this are refused (ERR_TOO_BIG) */
export const MAX_OPTION_LENGTH = 64 * 1024;

export function optionName(opt: number): string {
  for (const [k, v] of Object.entries(OPT)) if (v === opt) return k;
  return `OPT_${opt}`;
}

export function commandName(cmd: number): string {
  for (const [k, v] of Object.entries(CMD)) if (v === cmd) return k;
  return `CMD_${cmd}`;
}

/** Maps anything a device throws to an NBD wire error. */
export function errnoOf(err: unknown): number {
  if (err instanceof BlockDeviceError || (err && typeof err === 'object' && (err as { name?: unknown }).name === 'BlockDeviceError')) {
    switch ((err as BlockDeviceError).errno) {
      case 'EPERM':
      case 'EROFS':
        return ERR.EPERM;
      case 'EINVAL':
        return ERR.EINVAL;
      case 'ENOSPC':
        return ERR.ENOSPC;
      case 'ENOTSUP':
        return ERR.ENOTSUP;
      case 'EOVERFLOW':
        return ERR.EOVERFLOW;
      case 'ESHUTDOWN':
        return ERR.ESHUTDOWN;
      default:
        return ERR.EIO;
    }
  }
  const code = err && typeof err === 'object' ? (err as { code?: unknown }).code : undefined;
  switch (code) {
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return ERR.ENOSPC;
    case 'EROFS':
    case 'EPERM':
    case 'EACCES':
      return ERR.EPERM;
    default:
      return ERR.EIO;
  }
}

export function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** A UTF-8 string cut to at most `max` bytes (on a character boundary). */
export function boundedString(s: string, max = MAX_STRING): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length <= max) return b;
  let end = max;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}

// ---------------------------------------------------------------- handshake encoders

export function encodeServerGreeting(): Buffer {
  const b = Buffer.allocUnsafe(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return b;
}

export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const len = data ? data.length : 0;
  const b = Buffer.allocUnsafe(20 + len);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(len, 16);
  if (data) data.copy(b, 20);
  return b;
}

export function encodeRepServer(name: string, description?: string): Buffer {
  const n = boundedString(name);
  const d = description ? boundedString(description) : Buffer.alloc(0);
  const b = Buffer.allocUnsafe(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function encodeInfoExport(size: number, flags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(INFO.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

export function encodeInfoString(type: number, s: string): Buffer {
  const v = boundedString(s);
  const b = Buffer.allocUnsafe(2 + v.length);
  b.writeUInt16BE(type, 0);
  v.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(INFO.BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

export function encodeMetaContext(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + n.length);
  b.writeUInt32BE(id, 0);
  n.copy(b, 4);
  return b;
}

/** reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless NO_ZEROES */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

// ---------------------------------------------------------------- transmission encoders

/** A parsed request header. The cookie is kept as two 32-bit halves (opaque). */
export interface Request {
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  offset: number;
  length: number;
}

/** Parses a 28-byte request header; returns null when the magic is wrong. */
export function parseRequest(h: Buffer): Request | null {
  if (h.readUInt32BE(0) !== REQUEST_MAGIC) return null;
  // offsets above 2^53 cannot be represented exactly; they are past any export anyway
  const offset = h.readUInt32BE(16) * 0x100000000 + h.readUInt32BE(20);
  return {
    flags: h.readUInt16BE(4),
    type: h.readUInt16BE(6),
    cookieHi: h.readUInt32BE(8),
    cookieLo: h.readUInt32BE(12),
    offset,
    length: h.readUInt32BE(24),
  };
}

export function encodeSimpleReply(req: Request, error: number): Buffer {
  const b = Buffer.allocUnsafe(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeUInt32BE(req.cookieHi, 8);
  b.writeUInt32BE(req.cookieLo, 12);
  return b;
}

function chunkHeader(b: Buffer, req: Request, flags: number, type: number, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeUInt32BE(req.cookieHi, 8);
  b.writeUInt32BE(req.cookieLo, 12);
  b.writeUInt32BE(length, 16);
}

export function encodeChunkNone(req: Request): Buffer {
  const b = Buffer.allocUnsafe(20);
  chunkHeader(b, req, REPLY_FLAG_DONE, REPLY_TYPE.NONE, 0);
  return b;
}

/** header (20 bytes) + offset (8 bytes); the data follows separately on the wire */
export function encodeChunkDataHeader(req: Request, done: boolean, offset: number, dataLength: number): Buffer {
  const b = Buffer.allocUnsafe(28);
  chunkHeader(b, req, done ? REPLY_FLAG_DONE : 0, REPLY_TYPE.OFFSET_DATA, 8 + dataLength);
  b.writeBigUInt64BE(BigInt(offset), 20);
  return b;
}

export function encodeChunkHole(req: Request, done: boolean, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(32);
  chunkHeader(b, req, done ? REPLY_FLAG_DONE : 0, REPLY_TYPE.OFFSET_HOLE, 12);
  b.writeBigUInt64BE(BigInt(offset), 20);
  b.writeUInt32BE(length, 28);
  return b;
}

export function encodeChunkError(req: Request, done: boolean, error: number, message: string, offset?: number): Buffer {
  const msg = boundedString(message);
  const withOffset = offset !== undefined;
  const len = 6 + msg.length + (withOffset ? 8 : 0);
  const b = Buffer.allocUnsafe(20 + len);
  chunkHeader(b, req, done ? REPLY_FLAG_DONE : 0, withOffset ? REPLY_TYPE.ERROR_OFFSET : REPLY_TYPE.ERROR, len);
  b.writeUInt32BE(error, 20);
  b.writeUInt16BE(msg.length, 24);
  msg.copy(b, 26);
  if (withOffset) b.writeBigUInt64BE(BigInt(offset), 26 + msg.length);
  return b;
}

/** One BLOCK_STATUS chunk (always the final one: we serve a single context). */
export function encodeChunkBlockStatus(req: Request, contextId: number, extents: ReadonlyArray<{ length: number; flags: number }>): Buffer {
  const len = 4 + 8 * extents.length;
  const b = Buffer.allocUnsafe(20 + len);
  chunkHeader(b, req, REPLY_FLAG_DONE, REPLY_TYPE.BLOCK_STATUS, len);
  b.writeUInt32BE(contextId, 20);
  let p = 24;
  for (const e of extents) {
    b.writeUInt32BE(e.length, p);
    b.writeUInt32BE(e.flags, p + 4);
    p += 8;
  }
  return b;
}
