/**
 * `npm run fuzz`: coverage-guided fuzzing of blockgate's parsers, one target after another,
 * each in a worker thread watched for hangs.
 *
 *   npm run fuzz                                   every target, 10^6 inputs each
 *   npm run fuzz -- --target rbd-diff,manifest --runs 200000 --seed 7
 *   npm run fuzz -- --replay                       only the saved inputs under test/fixtures/fuzz/
 *   npm run fuzz -- --save-corpus                  keep inputs that reached new code as corpus
 *   npm run fuzz -- --write-seeds                  write the built-in seeds as files
 *   options: --no-coverage, --slow-ms N (one input's budget), --watchdog-s N, --rss-mib N, --list
 *
 * A finding (crash, hang, unbounded allocation) is saved as
 * test/fixtures/fuzz/<target>/<kind>-<hash>.bin (kind: crash, hang, alloc) (and .txt) and replayed by
 * test/fuzz-smoke.test.ts; the exit code is 1.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { TARGETS, targetByName } from './targets.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const FIXTURES = join(ROOT, 'test', 'fixtures', 'fuzz');
const MAX_INPUT = 256 * 1024;
/** corpus files kept per target by --save-corpus */
const MAX_CORPUS_FILES = 48;
/** and their bytes, per run */
const MAX_CORPUS_BYTES = 512 * 1024;

interface Args {
  targets: string[];
  runs: number;
  seed: number;
  coverage: boolean;
  slowMs: number;
  watchdogS: number;
  rssMiB: number;
  saveCorpus: boolean;
  writeSeeds: boolean;
  list: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { targets: TARGETS.map((t) => t.name), runs: 1_000_000, seed: Date.now() % 2 ** 31, coverage: true, slowMs: 2000, watchdogS: 30, rssMiB: 1536, saveCorpus: false, writeSeeds: false, list: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = () => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    const num = () => {
      const x = Number(v().replace(/_/g, '').replace(/^(\d+)e(\d+)$/, (_m, m, e) => String(Number(m) * 10 ** Number(e))));
      if (!Number.isFinite(x) || x < 0) throw new Error(`${k} needs a number`);
      return x;
    };
    switch (k) {
      case '--target':
      case '-t':
        a.targets = v().split(',').filter(Boolean);
        if (a.targets.includes('all')) a.targets = TARGETS.map((t) => t.name);
        break;
      case '--runs':
      case '-n':
        a.runs = Math.floor(num());
        break;
      case '--seed':
        a.seed = Math.floor(num());
        break;
      case '--no-coverage':
        a.coverage = false;
        break;
      case '--slow-ms':
        a.slowMs = num();
        break;
      case '--watchdog-s':
        a.watchdogS = num();
        break;
      case '--rss-mib':
        a.rssMiB = num();
        break;
      case '--replay':
        a.runs = 0;
        break;
      case '--save-corpus':
        a.saveCorpus = true;
        break;
      case '--write-seeds':
        a.writeSeeds = true;
        break;
      case '--list':
        a.list = true;
        break;
      case '--help':
      case '-h':
        console.log('usage: npm run fuzz -- [--target a,b|all] [--runs N] [--seed N] [--replay] [--save-corpus] [--write-seeds] [--no-coverage] [--slow-ms N] [--watchdog-s N] [--rss-mib N] [--list]');
        process.exit(0);
      default:
        throw new Error(`unknown option ${k} (see --help)`);
    }
  }
  for (const t of a.targets) targetByName(t);
  return a;
}

const hash = (b: Uint8Array) => createHash('sha1').update(b).digest('hex').slice(0, 12);

function save(dir: string, name: string, data: Uint8Array, note?: string): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const p = join(dir, `${name}.bin`);
  writeFileSync(p, data, { mode: 0o600 });
  if (note) writeFileSync(join(dir, `${name}.txt`), note, { mode: 0o600 });
  return p;
}

interface Done {
  type: 'done';
  stats: { runs: number; ms: number; perSecond: number; corpus: number; kept: number; blocks: number; outcomes: Record<string, number>; maxAlloc: number; maxRss: number; slowestMs: number };
  findings: Array<{ kind: string; message: string; stack?: string; source?: string; input: Uint8Array }>;
  newInputs: Uint8Array[];
}

function runTarget(name: string, a: Args): Promise<{ ok: boolean; summary: string }> {
  const dir = join(FIXTURES, name);
  const shared = new SharedArrayBuffer(8 + MAX_INPUT);
  const head = new Int32Array(shared, 0, 2);
  const bytes = new Uint8Array(shared, 8);
  const worker = new Worker(new URL('./worker.js', import.meta.url), {
    workerData: { target: name, runs: a.runs, seed: a.seed, coverage: a.coverage, slowMs: a.slowMs, rssLimit: a.rssMiB * 2 ** 20, fixtures: dir, shared },
    resourceLimits: { maxOldGenerationSizeMb: Math.max(256, a.rssMiB) },
  });
  const started = Date.now();
  return new Promise((resolve) => {
    let lastRuns = -1;
    let lastChange = Date.now();
    let settled = false;
    const finish = (ok: boolean, summary: string) => {
      if (settled) return;
      settled = true;
      clearInterval(timer);
      resolve({ ok, summary });
    };
    const saveCurrent = (kind: string, why: string) => {
      const n = Atomics.load(head, 0);
      const input = Buffer.from(bytes.subarray(0, n));
      const p = save(dir, `${kind}-${hash(input)}`, input, `${why}\n`);
      console.log(`  ${name}: ${why}; input saved as ${p}`);
    };
    const timer = setInterval(() => {
      const runs = Atomics.load(head, 1);
      if (runs !== lastRuns) {
        lastRuns = runs;
        lastChange = Date.now();
      } else if (Date.now() - lastChange > a.watchdogS * 1000) {
        saveCurrent('hang', `no progress for ${a.watchdogS} s: one input blocks the parser`);
        void worker.terminate();
        finish(false, `${name}: HANG after ${runs} inputs`);
      }
    }, 1000);
    worker.on('message', (m: { type: 'progress'; stats: Done['stats'] } | Done) => {
      if (m.type === 'progress') {
        const s = m.stats;
        console.log(`  ${name}: ${s.runs} inputs, ${Math.round(s.perSecond)}/s, corpus ${s.corpus}, ${s.blocks} blocks`);
        return;
      }
      const s = m.stats;
      for (const f of m.findings) {
        const p = f.source ? `saved input ${f.source}` : save(dir, `${f.kind}-${hash(f.input)}`, f.input, `${f.kind}: ${f.message}\n\n${f.stack ?? ''}\n`);
        console.log(`  ${name}: FINDING ${f.kind}: ${f.message}\n    ${p}\n    ${(f.stack ?? '').split('\n').slice(1, 5).join('\n    ')}`);
      }
      if (a.saveCorpus && m.newInputs.length) {
        const cdir = join(dir, 'corpus');
        let have = 0;
        try {
          have = readdirSync(cdir).length;
        } catch {
          // none yet
        }
        // the smallest new inputs, up to the caps
        const pick: Uint8Array[] = [];
        let bytes = 0;
        for (const b of [...m.newInputs].sort((x, y) => x.length - y.length)) {
          if (have + pick.length >= MAX_CORPUS_FILES || bytes + b.length > MAX_CORPUS_BYTES) break;
          pick.push(b);
          bytes += b.length;
        }
        for (const b of pick) save(cdir, hash(b), b);
        console.log(`  ${name}: ${pick.length} corpus inputs saved in ${cdir}`);
      }
      const outcomes = Object.entries(s.outcomes).sort((x, y) => y[1] - x[1]).map(([k, v]) => `${k} ${v}`).join(', ');
      const summary =
        `${name}: ${s.runs} inputs in ${(s.ms / 1000).toFixed(1)} s (${Math.round(s.perSecond)}/s), ${m.findings.length} findings, ` +
        `corpus ${s.corpus} (+${s.kept}), ${s.blocks} blocks covered, largest alloc ${s.maxAlloc} B, slowest ${s.slowestMs.toFixed(1)} ms, rss ${Math.round(s.maxRss / 2 ** 20)} MiB; ${outcomes}`;
      finish(m.findings.length === 0, summary);
    });
    worker.on('error', (e: Error) => {
      saveCurrent('crash', `the worker died: ${e.message}`);
      finish(false, `${name}: CRASH (${e.message}) after ${Atomics.load(head, 1)} inputs in ${Date.now() - started} ms`);
    });
    worker.on('exit', (code) => {
      if (!settled) {
        saveCurrent('crash', `the worker exited (code ${code}) before finishing: a promise that never settles, or the process was killed`);
        finish(false, `${name}: worker exited with code ${code}`);
      }
    });
  });
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  if (a.list) {
    for (const t of TARGETS) console.log(`${t.name.padEnd(18)} ${t.description}`);
    return;
  }
  if (a.writeSeeds) {
    for (const name of a.targets) {
      const t = targetByName(name);
      t.seeds().forEach((s, i) => save(join(FIXTURES, name), `seed-${i}`, s));
      console.log(`${name}: ${t.seeds().length} seeds written`);
    }
    return;
  }
  console.log(`fuzz: ${a.targets.join(', ')}; ${a.runs} inputs each; seed ${a.seed}; coverage ${a.coverage ? 'on' : 'off'}`);
  const results: string[] = [];
  let ok = true;
  for (const name of a.targets) {
    const r = await runTarget(name, a);
    console.log(r.summary);
    results.push(r.summary);
    ok &&= r.ok;
  }
  console.log(`\nsummary (seed ${a.seed}):\n${results.map((r) => `  ${r}`).join('\n')}`);
  process.exitCode = ok ? 0 : 1;
}

await main();
