/**
 * Smoke run of every fuzz target (tools/fuzz): each saved input under test/fixtures/fuzz/<target>/
 * (seeds, corpus, and every crash ever found, as regression inputs) replays clean, and a short
 * bounded run of fresh mutations finds nothing. The full campaign (10^6 inputs per target,
 * coverage-guided) is `npm run fuzz`, not part of `npm test`.
 */
import test from 'ava';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { Buffer } from 'node:buffer';
import { checkError, fuzz, loadInputs, type FindingKind, type Target } from '../tools/fuzz/engine.js';
import { TARGETS } from '../tools/fuzz/targets.js';

const FIXTURES = fileURLToPath(new URL('../../test/fixtures/fuzz/', import.meta.url));
const RUNS = Number(process.env['FUZZ_SMOKE_RUNS'] ?? 5000);
const MAX_MS = Number(process.env['FUZZ_SMOKE_MS'] ?? 3000);

for (const target of TARGETS) {
  test.serial(`fuzz ${target.name}: saved inputs replay clean, a short run finds nothing`, async (t) => {
    t.timeout(120_000);
    const saved = loadInputs(join(FIXTURES, target.name));
    t.true(saved.some((s) => s.name.startsWith('seed-')), `seed corpus under test/fixtures/fuzz/${target.name}/`);
    const seed = Number(process.env['FUZZ_SEED'] ?? Date.now() % 1_000_000);
    const s = await fuzz(target, { runs: saved.length + RUNS, maxMs: MAX_MS, seed, coverage: false, slowMs: 5000, extra: saved });
    t.log(`${s.runs} inputs (${saved.length} saved) in ${Math.round(s.ms)} ms, seed ${seed}; ${JSON.stringify(s.outcomes)}`);
    const found = s.findings.map((f) => `${f.kind} ${f.source ?? `input ${f.input.toString('base64').slice(0, 200)}`}: ${f.message}`);
    t.deepEqual(found, [], `findings (replay with FUZZ_SEED=${seed})`);
    t.true(s.runs >= saved.length + Math.min(RUNS, 200), 'the run went past the saved inputs');
  });
}

test.serial('the fuzz checks catch a crash, an unclear error, a hang and a large allocation', async (t) => {
  const bad = (name: string, run: (b: Buffer) => unknown): Target => ({ name, description: name, coverage: [], maxLen: 64, maxAlloc: 1 << 20, seeds: () => [Buffer.from([1, 2, 3])], run: run as Target['run'] });
  const cases: Array<[Target, FindingKind]> = [
    [bad('type-error', (b) => (b as unknown as { x: { y: number } }).x.y), 'crash'],
    [bad('range-error', (b) => b.readUInt32BE(b.length)), 'crash'],
    [bad('unclear', () => checkError(new Error('value is undefined'), () => true, 'parser')), 'crash'],
    [bad('alloc', () => void Buffer.alloc(8 << 20)), 'alloc'],
    [bad('slow', async () => new Promise((r) => setTimeout(r, 60))), 'hang'],
  ];
  for (const [target, kind] of cases) {
    const s = await fuzz(target, { runs: 5, seed: 1, coverage: false, slowMs: 30, stopOnFinding: true });
    t.is(s.findings[0]?.kind, kind, target.name);
  }
  // a clear error of the parser's own is not a finding
  class ParseError extends Error {}
  const ok = bad('clear', () => {
    try {
      throw new ParseError('bad magic at byte 0');
    } catch (e) {
      checkError(e, (x) => x instanceof ParseError, 'parser');
      return 'ParseError';
    }
  });
  t.deepEqual((await fuzz(ok, { runs: 50, seed: 1, coverage: false })).findings, []);
});
