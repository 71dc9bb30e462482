/**
 * Fuzz target: the NBD handshake (nbd/handshake.ts negotiate, over the real SocketReader),
 * and when it picks an export, the transmission phase on the rest of the bytes.
 * Input: one configuration byte (default export, TLS offered/required, shutting down,
 * in-flight limit), then the bytes a client sends after the greeting.
 * negotiate() may only resolve (an export or null) or reject on the end of the stream;
 * every device it opens is released; what it writes is framed.
 */
import { negotiate, release, type HandshakeIo } from '../../nbd/handshake.js';
import { EofError } from '../../nbd/reader.js';
import { Transmission } from '../../nbd/transmission.js';
import { checkError, invariant, type Target } from './engine.js';
import { CLIENT, checkHandshakeOutput, checkReply, context, fakeReader, feed, FuzzProvider, transmissionIo } from './nbd-common.js';
import { goData, metaData, option, randomOption, randomRequest, request } from './nbd-wire.js';
import { Rng, seedOf } from './rng.js';

const flags = (f: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(f >>> 0);
  return b;
};

function session(cfg: number, ...parts: Buffer[]): Buffer {
  return Buffer.concat([Buffer.from([cfg]), ...parts]);
}

const TLS_UNAVAILABLE = 'TLS is not available in the fuzzer';

export const nbdHandshakeTarget: Target = {
  name: 'nbd-handshake',
  description: 'nbd/handshake.ts negotiate (+ nbd/reader.ts SocketReader), then nbd/transmission.ts on what follows',
  coverage: ['/nbd/'],
  maxLen: 16 * 1024,
  maxAlloc: 2 * 1024 * 1024,
  seeds: () => [
    session(0, flags(3), option(8, Buffer.alloc(0)), option(10, metaData('scratch', ['base:allocation'])), option(7, goData('scratch', [1, 2, 3])), request(0, 0, 4096), request(7, 0, 65536), request(1, 8192, 512, 0, 7n, Buffer.alloc(512, 0x42)), request(2, 0, 0)),
    session(0, flags(1), option(3, Buffer.alloc(0)), option(6, goData('a', [1, 2])), option(9, metaData('a', [])), option(1, Buffer.from('a')), request(0, 512, 512), request(2, 0, 0)),
    session(1, flags(3), option(7, goData('', [])), request(3, 0, 0), request(4, 0, 4096), request(6, 4096, 8192, 2)),
    session(4, flags(3), option(5, Buffer.alloc(0)), option(2, Buffer.alloc(0))),
    session(12, flags(3), option(3, Buffer.alloc(0)), option(1, Buffer.from('scratch'))),
    session(0x30, flags(3), option(7, goData('scratch', [])), option(2, Buffer.alloc(0))),
    session(0, flags(3), option(99, Buffer.alloc(8)), option(8, Buffer.alloc(2)), option(7, goData('blocks', [3])), request(0, 1, 511), request(0, 12288, 4096)),
    session(0, flags(3), option(6, Buffer.alloc(0), 70 * 1024), Buffer.alloc(70 * 1024 > 16384 ? 1024 : 0)),
  ],
  dictionary: [flags(3), option(8, Buffer.alloc(0)), option(2, Buffer.alloc(0)), Buffer.from('IHAVEOPT'), Buffer.from('scratch'), Buffer.from('base:allocation'), request(2, 0, 0)],
  mutate(input, r) {
    switch (r.int(4)) {
      case 0: {
        // a fresh option sequence, maybe followed by requests
        const parts: Buffer[] = [Buffer.from([r.chance(0.7) ? 0 : r.int(256)]), flags(r.chance(0.9) ? r.int(4) : r.next())];
        for (let i = r.int(6); i >= 0; i--) parts.push(randomOption(r));
        if (r.chance(0.5)) parts.push(option(7, goData(r.pick(['scratch', 'a', 'blocks', '']), [])));
        for (let i = r.int(6); i > 0; i--) parts.push(randomRequest(r, 1 << 20));
        return Buffer.concat(parts);
      }
      case 1:
        // an option inserted after the flags
        return Buffer.concat([input.subarray(0, 5), randomOption(r), input.subarray(5)] as Buffer[]);
      case 2:
        // a new configuration byte
        return input.length ? Buffer.concat([Buffer.from([r.int(256)]), input.subarray(1)] as Buffer[]) : null;
      default:
        return Buffer.concat([input, r.chance(0.5) ? randomOption(r) : randomRequest(r, 1 << 20)] as Buffer[]);
    }
  },
  async run(input) {
    if (!input.length) return 'empty';
    const cfg = input[0]!;
    const provider = new FuzzProvider();
    const ctx = context(provider, cfg);
    const { sock, reader } = fakeReader();
    const out: Buffer[] = [];
    const handshakeIo = {
      reader,
      client: CLIENT,
      isTls: false,
      send: (b: Buffer) => void out.push(Buffer.from(b)),
      startTls: async () => {
        throw new Error(TLS_UNAVAILABLE);
      },
      log: () => {},
    };
    const io = handshakeIo as unknown as HandshakeIo;
    const feeding = feed(sock, input.subarray(1), new Rng(seedOf(input)));
    let chosen;
    try {
      chosen = await negotiate(io, ctx);
    } catch (e) {
      await feeding;
      checkError(e, (x) => x instanceof EofError || x.message === TLS_UNAVAILABLE, 'negotiate');
      invariant(provider.opens === provider.releases, `after a failed handshake ${provider.opens} opens, ${provider.releases} releases`);
      return e instanceof EofError ? 'eof' : 'tls';
    }
    const output = Buffer.concat(out);
    // an EXPORT_NAME reply is exactly 10 or 134 bytes; option replies are 20 bytes and more
    checkHandshakeOutput(output, chosen !== null);
    if (!chosen) {
      await feeding;
      invariant(provider.opens === provider.releases, `handshake ended with ${provider.opens} opens, ${provider.releases} releases`);
      return 'refused';
    }
    invariant(provider.opens === provider.releases + 1, 'the chosen export is the one device left open');
    let replies = 0;
    const t = new Transmission(
      transmissionIo(reader, (bufs) => {
        checkReply(bufs, chosen.structured);
        replies++;
        return true;
      }),
      ctx,
      chosen,
    );
    let reason: string;
    try {
      reason = await t.run();
    } catch (e) {
      checkError(e, () => false, 'Transmission.run');
      throw e;
    } finally {
      await feeding;
      await release(ctx, chosen.name, chosen.device);
    }
    invariant(provider.opens === provider.releases, 'every device released');
    void replies;
    return `export:${reason}`;
  },
};
