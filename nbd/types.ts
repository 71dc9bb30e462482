/** Public types of the NBD server (re-exported by nbd/server.ts). */
import type { SecureContext } from 'node:tls';
import type { BlockDevice } from '../blockdev/types.js';

export interface ExportInfo {
  name: string;
  description?: string;
}

export interface ExportProvider {
  list(): Promise<ExportInfo[]> | ExportInfo[];
  /** open the device for one client connection; null -> NBD_REP_ERR_UNKNOWN */
  open(name: string): Promise<BlockDevice | null>;
  /**
   * called when that connection ends (the device's close() is called by the provider, not
   * the server, so a provider can share one device between connections). Also called right
   * after an NBD_OPT_INFO, which opens the device only to describe it.
   */
  release?(name: string, dev: BlockDevice): Promise<void> | void;
}

export interface NbdTlsOptions {
  key: Buffer | string;
  cert: Buffer | string;
  /** CA bundle; when given, clients must present a certificate signed by it (unless verifyPeer is false) */
  ca?: Buffer | string;
  /** FORCEDTLS: every option but STARTTLS/ABORT is refused until TLS is up */
  required?: boolean;
  /** whether `required` also holds on unix sockets; default true (false: a 0600 socket is trusted as it is) */
  requiredOnUnix?: boolean;
  /** require and verify client certificates; default: true when `ca` is given */
  verifyPeer?: boolean;
}

export type NbdLog = (event: string, fields: Record<string, unknown>) => void;

/** Who is on the other end of a connection, as far as the transport can tell. */
export interface ClientInfo {
  /** the listener the client came in on */
  listener: { transport: 'tcp'; host: string; port: number } | { transport: 'unix'; path: string };
  /** peer address:port, or 'unix' */
  peer: string;
  /** TLS is up on this connection */
  tls: boolean;
  /** the verified client certificate (only with TLS and a CA that checks peers) */
  certificate?: {
    /** subject attributes in certificate order, e.g. [['O', 'Acme'], ['CN', 'ops-host-1']] */
    subject: Array<[string, string]>;
    fingerprint256: string;
  };
}

/** What a client may do with one export: nothing (it does not exist for this client), read, or read and write. */
export type ExportAccess = 'none' | 'read' | 'write';

export interface NbdServerOptions {
  provider: ExportProvider;
  tls?: NbdTlsOptions;
  defaultExport?: string;
  /** largest READ/WRITE payload accepted and advertised; default 32 MiB */
  maxRequestBytes?: number;
  log?: NbdLog;
  /** a client must finish option negotiation within this time; default 60 s */
  handshakeTimeoutMs?: number;
  /** requests served concurrently per connection; default 64 */
  maxInFlight?: number;
  /** payload bytes (read data until sent, write data, CACHE windows) held per connection; default 32 MiB */
  maxInFlightBytes?: number;
  /** the same over all connections of this server; default 256 MiB */
  maxTotalInFlightBytes?: number;
  /** open connections over all listeners; more are closed at once (logged as connection-refused); default 256 */
  maxConnections?: number;
  /**
   * Decides, for each export name, what a client may do with it: consulted by NBD_OPT_LIST
   * (only exports not 'none' are listed) and before INFO/GO/EXPORT_NAME open anything (a 'none'
   * export is answered exactly like one that does not exist); 'read' serves a writable device
   * read-only. Default: every export, with the device's own writability.
   */
  access?: (name: string, client: ClientInfo) => ExportAccess;
}

/** Options with defaults applied, shared by every connection of one server. */
export interface ServerContext {
  provider: ExportProvider;
  defaultExport: string | undefined;
  maxRequestBytes: number;
  maxInFlight: number;
  /** (optional members: contexts built by hand, as in tools/fuzz, get the defaults) default 32 MiB */
  maxInFlightBytes?: number;
  maxConnections?: number;
  /** payload bytes held by every connection of the server together; default: no shared bound */
  budget?: { used: number; max: number; waiters: Set<() => void> };
  /** default: every export */
  access?: (name: string, client: ClientInfo) => ExportAccess;
  handshakeTimeoutMs: number;
  /** `requiredOnUnix` false: clients of a unix socket (guarded by its file mode) may go without TLS */
  tls: { context: SecureContext; required: boolean; verifyPeer: boolean; requiredOnUnix?: boolean } | null;
  log: NbdLog;
  /** true once NbdServer.close() started */
  shuttingDown: boolean;
}

export type { BlockDevice };
