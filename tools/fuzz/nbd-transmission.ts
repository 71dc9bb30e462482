/**
 * Fuzz target: the NBD transmission phase (nbd/transmission.ts request parsing and checks,
 * nbd/protocol.ts parseRequest, nbd/extents.ts, nbd/replies.ts) over the real SocketReader.
 * Input: one configuration byte (structured replies, meta context, which export, in-flight
 * limit), then the request stream. run() must return an end reason and never throw; every
 * reply is framed (structured: chunks ending with exactly one DONE).
 */
import { exportCaps } from '../../nbd/capabilities.js';
import type { Negotiated } from '../../nbd/handshake.js';
import { Transmission } from '../../nbd/transmission.js';
import { checkError, invariant, type Target } from './engine.js';
import { checkReply, context, DEV_SIZE, fakeReader, feed, FuzzDevice, FuzzProvider, transmissionIo } from './nbd-common.js';
import { randomRequest, request } from './nbd-wire.js';
import { Rng, seedOf } from './rng.js';

function device(kind: number): FuzzDevice {
  switch (kind & 3) {
    case 0:
      return new FuzzDevice({});
    case 1:
      return new FuzzDevice({ readOnly: true });
    case 2:
      return new FuzzDevice({ minBlock: 512, failPage: 3 });
    default:
      return new FuzzDevice({ lean: true });
  }
}

export const nbdTransmissionTarget: Target = {
  name: 'nbd-transmission',
  description: 'nbd/transmission.ts (+ protocol.ts parseRequest, extents.ts, replies.ts, reader.ts): request streams after a negotiated export',
  coverage: ['/nbd/'],
  maxLen: 16 * 1024,
  maxAlloc: 2 * 1024 * 1024,
  seeds: () => [
    Buffer.concat([Buffer.from([3]), request(0, 0, 4096), request(7, 0, DEV_SIZE), request(7, 4096, 65536, 8), request(1, 8192, 512, 1, 9n, Buffer.alloc(512, 1)), request(6, 0, 65536, 2), request(6, 0, 4096, 16), request(4, 65536, 4096), request(5, 0, DEV_SIZE), request(3, 0, 0), request(0, 0, 12288, 4), request(2, 0, 0)]),
    Buffer.concat([Buffer.from([0]), request(0, 0, 512), request(1, 0, 4096, 0, 1n, Buffer.alloc(4096)), request(0, DEV_SIZE - 512, 1024), request(9, 0, 0), request(2, 0, 0)]),
    Buffer.concat([Buffer.from([0x0b]), request(0, 12288, 4096), request(0, 1, 511), request(7, 0, 4096), request(1, 0, 300 * 1024), Buffer.alloc(2048)]),
    Buffer.concat([Buffer.from([0x07]), request(1, 0, 512, 0, 1n, Buffer.alloc(512)), request(6, 0, 8192), request(0, 0, 256 * 1024)]),
    Buffer.concat([Buffer.from([0x13]), request(0, 0, 256 * 1024), request(0, 0, 256 * 1024), request(1, 0, 256 * 1024, 0, 2n, Buffer.alloc(1024))]),
  ],
  dictionary: [request(2, 0, 0), Buffer.from([0x25, 0x60, 0x95, 0x13])],
  mutate(input, r) {
    const n = r.int(4);
    if (n === 0 || !input.length) {
      const parts: Buffer[] = [Buffer.from([r.int(32)])];
      for (let i = 1 + r.int(10); i > 0; i--) parts.push(randomRequest(r, DEV_SIZE));
      return Buffer.concat(parts);
    }
    if (n === 1) return Buffer.concat([Buffer.from([r.int(256)]), input.subarray(1)] as Buffer[]);
    // a request inserted at a request boundary (or anywhere)
    const at = 1 + (r.chance(0.7) ? 28 * r.int(Math.floor((input.length - 1) / 28) + 1) : r.int(input.length));
    return Buffer.concat([input.subarray(0, at), randomRequest(r, DEV_SIZE), input.subarray(at)] as Buffer[]);
  },
  async run(input) {
    if (!input.length) return 'empty';
    const cfg = input[0]!;
    const structured = (cfg & 1) !== 0;
    const meta = structured && (cfg & 2) !== 0;
    const dev = device(cfg >> 2);
    const ctx = context(new FuzzProvider(), (cfg & 0x10 ? 2 : 0) | (cfg & 0xc0));
    const x: Negotiated = { name: 'fuzz', device: dev, caps: exportCaps(dev, structured, ctx.maxRequestBytes), structured, metaContextId: meta ? 1 : 0 };
    const { sock, reader } = fakeReader();
    let replies = 0;
    const t = new Transmission(
      transmissionIo(reader, (bufs) => {
        checkReply(bufs, structured);
        replies++;
        return true;
      }),
      ctx,
      x,
    );
    const feeding = feed(sock, input.subarray(1), new Rng(seedOf(input)));
    let reason: string;
    try {
      reason = await t.run();
    } catch (e) {
      checkError(e, () => false, 'Transmission.run');
      throw e;
    } finally {
      await feeding;
    }
    invariant(['disconnect', 'eof', 'protocol-error'].includes(reason), `end reason ${reason}`);
    invariant(replies <= Math.floor((input.length - 1) / 28), `${replies} replies for at most ${Math.floor((input.length - 1) / 28)} requests`);
    return reason;
  },
};
