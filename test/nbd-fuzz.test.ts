/**
 * Fuzz: hundreds of malformed sessions (random bytes, random options, random requests,
 * bit-flipped valid sessions) from raw sockets, while real clients keep copying an export
 * and must get the right bytes every time. The server must survive, clean up every
 * connection and release every device it opened.
 */
import test from 'ava';
import { MemDevice } from './helpers/nbd-devices.js';
import { fuzzPayload, fuzzSession, Rng, type FuzzKind } from './helpers/nbd-fuzz.js';
import { makeImage, runOk, runPython, sha256, startServer, waitIdle } from './helpers/nbd-harness.js';

const MiB = 1024 * 1024;

test('malformed handshakes and requests never disturb a real client nor the server', async (t) => {
  t.timeout(120_000);
  const seed = Number(process.env['NBD_FUZZ_SEED'] ?? Date.now() % 1_000_000);
  t.log(`seed ${seed} (replay with NBD_FUZZ_SEED=${seed})`);
  const size = 8 * MiB;
  const { data } = makeImage(size, 21);
  const a = new MemDevice(size, { readOnly: true });
  a.load(data);
  const scratch = new MemDevice(size);
  const h = await startServer(t, { a: { device: a }, scratch: { device: scratch } }, { maxRequestBytes: 4 * MiB, handshakeTimeoutMs: 5000 });
  const want = sha256(data);
  const rssBefore = process.memoryUsage().rss;

  const kinds: FuzzKind[] = ['random-bytes', 'options', 'requests', 'flipped-session'];
  const CASES = 2400;
  const PARALLEL = 8;
  const outcomes: Record<string, number> = {};
  let next = 0;
  let fuzzing = true;
  const fuzzer = async (w: number) => {
    while (next < CASES) {
      const i = next++;
      const r = new Rng(seed * 7919 + i * 104729 + w);
      const kind = kinds[i % kinds.length]!;
      const how = await fuzzSession(h.port, fuzzPayload(r, kind, size), r, 100);
      outcomes[`${kind}:${how}`] = (outcomes[`${kind}:${how}`] ?? 0) + 1;
    }
  };

  // real clients running during the fuzz, checking bytes every time
  let copies = 0;
  const realClient = async () => {
    while (fuzzing) {
      const out = await runOk('bash', ['-c', `nbdcopy --connections=2 '${h.uri('a')}' - | sha256sum`]);
      t.is(out.split(' ')[0], want, 'nbdcopy read the right bytes while the fuzzer ran');
      copies++;
    }
  };
  let probes = 0;
  const probeClient = async () => {
    while (fuzzing) {
      const r = await runPython<{ hash: string; structured: boolean }>('probe.py', ['read', h.uri('a'), probes % 2 ? 'on' : 'off']);
      t.is(r.hash, want, 'libnbd read the right bytes while the fuzzer ran');
      probes++;
    }
  };
  const real = Promise.all([realClient(), probeClient()]);
  await Promise.all(Array.from({ length: PARALLEL }, (_, w) => fuzzer(w)));
  fuzzing = false;
  await real;
  t.log(`outcomes ${JSON.stringify(outcomes)}; ${copies} nbdcopy runs, ${probes} libnbd runs`);
  t.true(copies >= 1 && probes >= 1);

  // the server is still fine: a fresh client, and no connection or device left behind
  const info = JSON.parse(await runOk('nbdinfo', ['--json', h.uri('a')]));
  t.is(info.exports[0]['export-size'], size);
  await waitIdle(h, 10_000);
  t.is(h.provider.opens, h.provider.releases, 'every opened device was released');
  t.is(sha256(await a.snapshot()), want, 'the read-only export was never modified');
  const grown = process.memoryUsage().rss - rssBefore;
  t.true(grown < 512 * MiB, `rss grew by ${Math.round(grown / MiB)} MiB`);
  t.true(h.logs.some((l) => l.event === 'protocol-error'), 'malformed input was seen and logged');
});
