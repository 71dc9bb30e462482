/**
 * Fixed-newstyle option negotiation: greeting, client flags, then options until the client
 * picks an export (EXPORT_NAME or GO) or gives up. Every option length is bounded before
 * anything is read; malformed options get NBD_REP_ERR_INVALID and negotiation goes on.
 */
import type { BlockDevice } from '../blockdev/types.js';
import { exportCaps, type ExportCaps } from './capabilities.js';
import type { SocketReader } from './reader.js';
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_ID,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  IHAVEOPT,
  INFO,
  MAX_OPTION_LENGTH,
  MAX_STRING,
  OPT,
  OPTION_HEADER_SIZE,
  REP,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOptionReply,
  encodeRepServer,
  encodeServerGreeting,
  messageOf,
  optionName,
} from './protocol.js';
import type { ClientInfo, ExportAccess, ServerContext } from './types.js';

/** What the connection needs to offer the handshake. */
export interface HandshakeIo {
  readonly reader: SocketReader;
  readonly isTls: boolean;
  /** who the client is (asked again after STARTTLS: the certificate counts only then); absent: unknown, TCP */
  readonly client?: ClientInfo;
  send(buf: Buffer): void;
  /** detach from the plain socket, send `ack` in clear, then run the TLS server handshake */
  startTls(ack: Buffer): Promise<void>;
  log(event: string, fields: Record<string, unknown>): void;
}

export interface Negotiated {
  name: string;
  device: BlockDevice;
  caps: ExportCaps;
  structured: boolean;
  /** context id of base:allocation, or 0 when no meta context was selected */
  metaContextId: number;
}

/** an option larger than MAX_OPTION_LENGTH is skipped and refused up to this size, closed above */
const MAX_SKIPPED_OPTION = 1024 * 1024;
/** options one connection may send before it must choose an export */
const MAX_OPTIONS = 4096;

class Invalid extends Error {}

const UNKNOWN_CLIENT: ClientInfo = { listener: { transport: 'tcp', host: '', port: 0 }, peer: 'unknown', tls: false };

/** Minimal bounds-checked cursor over an option payload. */
class Cursor {
  pos = 0;
  constructor(readonly data: Buffer) {}
  u16(): number {
    if (this.pos + 2 > this.data.length) throw new Invalid('option data truncated');
    const v = this.data.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number {
    if (this.pos + 4 > this.data.length) throw new Invalid('option data truncated');
    const v = this.data.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  str(len: number, what: string): string {
    if (len > MAX_STRING) throw new Invalid(`${what} longer than ${MAX_STRING} bytes`);
    if (this.pos + len > this.data.length) throw new Invalid(`${what} overruns the option data`);
    const s = this.data.toString('utf8', this.pos, this.pos + len);
    this.pos += len;
    return s;
  }
  end(): void {
    if (this.pos !== this.data.length) throw new Invalid('trailing bytes in option data');
  }
}

/**
 * Runs the negotiation. Resolves with the chosen export, or null when the session must end
 * (ABORT, protocol violation, refused EXPORT_NAME). Rejects only on I/O errors.
 */
export async function negotiate(io: HandshakeIo, ctx: ServerContext): Promise<Negotiated | null> {
  io.send(encodeServerGreeting());
  const clientFlags = (await io.reader.read(4)).readUInt32BE(0);
  if (clientFlags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) {
    io.log('protocol-error', { phase: 'handshake', reason: `unknown client flags 0x${clientFlags.toString(16)}` });
    return null;
  }
  const noZeroes = (clientFlags & FLAG_C_NO_ZEROES) !== 0;
  let structured = false;
  let meta: { exportName: string; selected: boolean } | null = null;

  const reply = (option: number, type: number, data?: Buffer) => io.send(encodeOptionReply(option, type, data));
  const error = (option: number, type: number, message: string) => reply(option, type, Buffer.from(message.slice(0, 1024), 'utf8'));
  const resolveName = (name: string) => (name === '' && ctx.defaultExport !== undefined ? ctx.defaultExport : name);
  const accessOf = (name: string): ExportAccess => {
    try {
      if (!ctx.access) return 'write';
      const a = ctx.access(name, io.client ?? UNKNOWN_CLIENT);
      return a === 'read' || a === 'write' ? a : 'none';
    } catch (e) {
      io.log('access-error', { export: name, error: messageOf(e) });
      return 'none';
    }
  };

  for (let count = 0; count < MAX_OPTIONS; count++) {
    const head = await io.reader.read(OPTION_HEADER_SIZE);
    if (head.readBigUInt64BE(0) !== IHAVEOPT) {
      io.log('protocol-error', { phase: 'handshake', reason: 'bad option magic' });
      return null;
    }
    const option = head.readUInt32BE(8);
    const length = head.readUInt32BE(12);
    if (length > MAX_OPTION_LENGTH) {
      io.log('protocol-error', { phase: 'handshake', option: optionName(option), reason: `option length ${length} too large` });
      if (option === OPT.EXPORT_NAME || length > MAX_SKIPPED_OPTION) return null;
      await io.reader.skip(length);
      error(option, REP.ERR_TOO_BIG, `option data longer than ${MAX_OPTION_LENGTH} bytes`);
      continue;
    }
    const data = await io.reader.read(length);
    io.log('option', { option: optionName(option), length });

    if (ctx.shuttingDown && option !== OPT.ABORT) {
      if (option === OPT.EXPORT_NAME) return null;
      error(option, REP.ERR_SHUTDOWN, 'server is shutting down');
      continue;
    }
    const tlsRequired = !!ctx.tls?.required && (ctx.tls.requiredOnUnix !== false || io.client?.listener.transport !== 'unix');
    if (tlsRequired && !io.isTls && option !== OPT.STARTTLS && option !== OPT.ABORT) {
      if (option === OPT.EXPORT_NAME) {
        io.log('refused', { reason: 'EXPORT_NAME without TLS while TLS is required' });
        return null;
      }
      io.log('refused', { option: optionName(option), reason: 'TLS required' });
      error(option, REP.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
      continue;
    }

    try {
      switch (option) {
        case OPT.EXPORT_NAME: {
          if (length > MAX_STRING) return null;
          const name = resolveName(data.toString('utf8'));
          const opened = await openExport(ctx, name, structured, accessOf(name));
          if (typeof opened === 'string') {
            io.log('refused', { export: name, reason: opened });
            return null;
          }
          io.send(encodeExportNameReply(opened.caps.size, opened.caps.flags, noZeroes));
          return finish(name, opened, structured, meta);
        }

        case OPT.ABORT:
          reply(option, REP.ACK);
          return null;

        case OPT.LIST: {
          if (length !== 0) throw new Invalid('NBD_OPT_LIST takes no data');
          let exports;
          try {
            exports = await ctx.provider.list();
          } catch (e) {
            error(option, REP.ERR_PLATFORM, `cannot list exports: ${messageOf(e)}`);
            break;
          }
          for (const e of exports) if (accessOf(e.name) !== 'none') reply(option, REP.SERVER, encodeRepServer(e.name, e.description));
          reply(option, REP.ACK);
          break;
        }

        case OPT.STARTTLS: {
          if (length !== 0) throw new Invalid('NBD_OPT_STARTTLS takes no data');
          if (!ctx.tls) {
            error(option, REP.ERR_POLICY, 'TLS is not configured on this server');
            break;
          }
          if (io.isTls) throw new Invalid('TLS is already active');
          await io.startTls(encodeOptionReply(option, REP.ACK));
          // nothing negotiated in clear survives the upgrade
          structured = false;
          meta = null;
          break;
        }

        case OPT.INFO:
        case OPT.GO: {
          const c = new Cursor(data);
          const nameLen = c.u32();
          const requested = c.str(nameLen, 'export name');
          const nInfo = c.u16();
          const infos = new Set<number>();
          for (let i = 0; i < nInfo; i++) infos.add(c.u16());
          c.end();
          const name = resolveName(requested);
          const opened = await openExport(ctx, name, structured, accessOf(name));
          if (typeof opened === 'string') {
            error(option, REP.ERR_UNKNOWN, opened);
            break;
          }
          let handedOver = false;
          try {
            const { caps } = opened;
            reply(option, REP.INFO, encodeInfoExport(caps.size, caps.flags));
            reply(option, REP.INFO, encodeInfoBlockSize(caps.minBlock, caps.preferredBlock, caps.maxPayload));
            if (infos.has(INFO.NAME)) reply(option, REP.INFO, encodeInfoString(INFO.NAME, name));
            if (infos.has(INFO.DESCRIPTION)) {
              const description = await describe(ctx, name);
              if (description) reply(option, REP.INFO, encodeInfoString(INFO.DESCRIPTION, description));
            }
            reply(option, REP.ACK);
            if (option === OPT.GO) {
              handedOver = true;
              return finish(name, opened, structured, meta);
            }
          } finally {
            if (!handedOver) await release(ctx, name, opened.device);
          }
          break;
        }

        case OPT.STRUCTURED_REPLY:
          if (length !== 0) throw new Invalid('NBD_OPT_STRUCTURED_REPLY takes no data');
          if (structured) throw new Invalid('structured replies already negotiated');
          structured = true;
          reply(option, REP.ACK);
          break;

        case OPT.LIST_META_CONTEXT:
        case OPT.SET_META_CONTEXT: {
          const set = option === OPT.SET_META_CONTEXT;
          if (set && !structured) throw new Invalid('negotiate structured replies before meta contexts');
          const c = new Cursor(data);
          const exportName = resolveName(c.str(c.u32(), 'export name'));
          const nQueries = c.u32();
          const queries: string[] = [];
          for (let i = 0; i < nQueries; i++) queries.push(c.str(c.u32(), 'query'));
          c.end();
          if (set) {
            const selected = queries.includes(BASE_ALLOCATION);
            meta = { exportName, selected };
            if (selected) reply(option, REP.META_CONTEXT, encodeMetaContext(BASE_ALLOCATION_ID, BASE_ALLOCATION));
          } else if (queries.length === 0 || queries.some((q) => q === 'base:' || q === BASE_ALLOCATION)) {
            reply(option, REP.META_CONTEXT, encodeMetaContext(0, BASE_ALLOCATION));
          }
          reply(option, REP.ACK);
          break;
        }

        default:
          error(option, REP.ERR_UNSUP, `option ${optionName(option)} is not supported`);
      }
    } catch (e) {
      if (!(e instanceof Invalid)) throw e;
      io.log('option-invalid', { option: optionName(option), reason: e.message });
      error(option, REP.ERR_INVALID, e.message);
    }
  }
  io.log('protocol-error', { phase: 'handshake', reason: `more than ${MAX_OPTIONS} options` });
  return null;
}

function finish(
  name: string,
  opened: { device: BlockDevice; caps: ExportCaps },
  structured: boolean,
  meta: { exportName: string; selected: boolean } | null,
): Negotiated {
  const metaOk = structured && meta !== null && meta.selected && meta.exportName === name;
  return { name, device: opened.device, caps: opened.caps, structured, metaContextId: metaOk ? BASE_ALLOCATION_ID : 0 };
}

/**
 * Opens an export; returns a reason string when it cannot be served. An export the client
 * may not see is never opened and gets the very answer of one that does not exist.
 */
async function openExport(
  ctx: ServerContext,
  name: string,
  structured: boolean,
  access: ExportAccess,
): Promise<{ device: BlockDevice; caps: ExportCaps } | string> {
  if (access === 'none') return `unknown export ${JSON.stringify(name)}`;
  let device: BlockDevice | null;
  try {
    device = await ctx.provider.open(name);
  } catch (e) {
    return `cannot open export ${JSON.stringify(name)}: ${messageOf(e)}`;
  }
  if (!device) return `unknown export ${JSON.stringify(name)}`;
  try {
    return { device, caps: exportCaps(device, structured, ctx.maxRequestBytes, access === 'read') };
  } catch (e) {
    await release(ctx, name, device);
    return `export ${JSON.stringify(name)} is unusable: ${messageOf(e)}`;
  }
}

async function describe(ctx: ServerContext, name: string): Promise<string | undefined> {
  try {
    const all = await ctx.provider.list();
    return all.find((e) => e.name === name)?.description;
  } catch {
    return undefined;
  }
}

export async function release(ctx: ServerContext, name: string, device: BlockDevice): Promise<void> {
  try {
    await ctx.provider.release?.(name, device);
  } catch (e) {
    ctx.log('release-error', { export: name, error: messageOf(e) });
  }
}
