/**
 * Shared pieces of the byte-level NBD tests (nbd-handshake / nbd-transmission): wire values
 * written out by hand from the spec, a device with a known hole, connection helpers.
 */
import type { ExecutionContext } from 'ava';
import { MemDevice } from './nbd-devices.js';
import { pseudoRandom, sha256 } from './nbd-harness.js';
import { RawClient } from './nbd-rawclient.js';

export const MiB = 1024 * 1024;
// values written out by hand from the NBD spec, independent of nbd/protocol.ts
export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, PEEK: 4, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED: 8, LIST_META: 9, SET_META: 10, EXT_HEADERS: 11 };
export const REP = { ACK: 1, SERVER: 2, INFO: 3, META: 4, UNSUP: 0x80000001, POLICY: 0x80000002, INVALID: 0x80000003, UNKNOWN: 0x80000006, TOO_BIG: 0x80000009 };
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 };
export const CHUNK = { NONE: 0, DATA: 1, HOLE: 2, BLOCK_STATUS: 5, ERROR: 0x8001, ERROR_OFFSET: 0x8002 };
export const E = { EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95 };

export function device(size = 4 * MiB, opts: ConstructorParameters<typeof MemDevice>[1] = {}) {
  const dev = new MemDevice(size, opts);
  const data = pseudoRandom(size, 77);
  data.fill(0, MiB, 2 * MiB); // a hole
  dev.load(data);
  return { dev, data };
}

export async function client(t: ExecutionContext, port: number): Promise<RawClient> {
  const c = await RawClient.connect(port);
  t.teardown(() => c.destroy());
  return c;
}

export async function expectClosed(t: ExecutionContext, c: RawClient, ms = 3000): Promise<void> {
  const r = await Promise.race([c.closed.then(() => 'closed'), new Promise((r) => setTimeout(() => r('open'), ms))]);
  t.is(r, 'closed', 'server closed the connection');
}

/** A connection that is still served correctly: GO + one checked read. */
export async function stillServes(t: ExecutionContext, port: number, data: Buffer): Promise<void> {
  const c = await client(t, port);
  await c.greet();
  await c.go('a');
  c.request(CMD.READ, 4096, 8192, { cookie: 99n });
  const r = await c.readSimple(8192);
  t.is(r.error, 0);
  t.is(sha256(r.data), sha256(data.subarray(4096, 4096 + 8192)));
  c.request(CMD.DISC, 0, 0);
  await expectClosed(t, c);
}
