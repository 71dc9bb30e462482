/** Public types of the NBD server (re-exported by nbd/server.ts). */
import type { SecureContext } from 'node:tls';
import type { BlockDevice } from './blockdev.js';

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
  /** require and verify client certificates; default: true when `ca` is given */
  verifyPeer?: boolean;
}

export type NbdLog = (event: string, fields: Record<string, unknown>) => void;

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
}

/** Options with defaults applied, shared by every connection of one server. */
export interface ServerContext {
  provider: ExportProvider;
  defaultExport: string | undefined;
  maxRequestBytes: number;
  maxInFlight: number;
  handshakeTimeoutMs: number;
  tls: { context: SecureContext; required: boolean; verifyPeer: boolean } | null;
  log: NbdLog;
  /** true once NbdServer.close() started */
  shuttingDown: boolean;
}

export type { BlockDevice };
