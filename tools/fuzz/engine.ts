/**
 * The fuzz loop: a corpus (seeds, saved inputs), mutations (the target's structure-aware
 * ones and generic byte ones), one run of the parser per input with every outcome checked,
 * and V8 block coverage to keep the inputs that reach new code.
 *
 * What counts as a finding:
 *  - crash: the parser threw something that is not a clear error of its own (a TypeError or
 *    RangeError from deep inside, a non-Error, an error without a message or speaking of
 *    undefined), or broke an invariant the target checks;
 *  - hang: one input took longer than the time budget (checked twice), or never settled
 *    (the runner's watchdog catches inputs that block the thread);
 *  - alloc: a single Buffer allocation above the target's bound while parsing one input,
 *    or the process's RSS above the run's bound.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Coverage } from './coverage.js';
import { mutateBytes } from './mutate.js';
import { Rng } from './rng.js';

export type FindingKind = 'crash' | 'hang' | 'alloc';

export class Finding extends Error {
  constructor(
    readonly kind: FindingKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'Finding';
  }
}

export interface Target {
  name: string;
  /** what is fuzzed, one line */
  description: string;
  /** substrings of script URLs whose coverage guides this target (e.g. "/nbd/") */
  coverage: string[];
  /** longest input generated */
  maxLen: number;
  /** largest single Buffer allocation allowed while one input is parsed */
  maxAlloc: number;
  /** built-in seeds (also written to test/fixtures/fuzz/<name>/ by --write-seeds) */
  seeds(): Buffer[];
  dictionary?: Buffer[];
  /** structure-aware mutation or generation; null to fall back to byte mutations */
  mutate?(input: Buffer, r: Rng, other: () => Buffer): Buffer | null;
  /** Parses one input and checks the outcome; throws a Finding for a defect. */
  run(input: Buffer): Promise<string | void> | string | void;
}

const NATIVE_ERRORS = [TypeError, RangeError, ReferenceError, SyntaxError, EvalError, URIError];
const UNCLEAR = /\bundefined\b|Cannot read prop|Cannot set prop|is not a function|is not iterable|Maximum call stack|\[object Object\]|\bNaN\b|Invalid array length|out of memory/;

/**
 * Checks that `e`, thrown by the parser, is a clear error: an Error, of a class the target
 * expects (`ok`), not a built-in TypeError/RangeError/..., with a message that says something.
 */
export function checkError(e: unknown, ok: (e: Error) => boolean, what: string): void {
  if (e instanceof Finding) throw e;
  if (!(e instanceof Error)) throw new Finding('crash', `${what} threw a non-Error: ${String(e).slice(0, 200)}`);
  const native = NATIVE_ERRORS.some((C) => e instanceof C);
  const desc = `${e.name}: ${e.message.slice(0, 300)}`;
  if (native) throw new Finding('crash', `${what} threw a built-in ${desc}`, { cause: e });
  if (!ok(e)) throw new Finding('crash', `${what} threw an unexpected ${desc}`, { cause: e });
  if (!e.message.trim()) throw new Finding('crash', `${what} threw ${e.name} without a message`, { cause: e });
  if (UNCLEAR.test(e.message)) throw new Finding('crash', `${what} threw an unclear ${desc}`, { cause: e });
}

export function invariant(cond: unknown, message: string): asserts cond {
  if (!cond) throw new Finding('crash', `invariant broken: ${message}`);
}

// ---------------------------------------------------------------- allocation guard

let allocMax = 0;
let guardInstalled = false;
/** Wraps Buffer.alloc/allocUnsafe/allocUnsafeSlow to record the largest size asked for. */
function installAllocGuard(): void {
  if (guardInstalled) return;
  guardInstalled = true;
  const B = Buffer as unknown as Record<string, (size: number, ...rest: unknown[]) => Buffer>;
  for (const name of ['alloc', 'allocUnsafe', 'allocUnsafeSlow']) {
    const orig = B[name]!.bind(Buffer);
    B[name] = (size: number, ...rest: unknown[]) => {
      if (typeof size === 'number' && size > allocMax) allocMax = size;
      return orig(size, ...rest);
    };
  }
}

export interface RunOptions {
  runs: number;
  seed: number;
  /** stop after this long even if fewer runs were done */
  maxMs?: number;
  /** use V8 block coverage to keep inputs that reach new code (default true) */
  coverage?: boolean;
  /** one input's time budget (default 2000 ms) */
  slowMs?: number;
  /** process RSS bound (default 1.5 GiB) */
  rssLimit?: number;
  /** inputs loaded from disk (seeds, corpus, regressions); all are run first */
  extra?: Array<{ name: string; data: Buffer }>;
  /** called before every input is run (the runner's watchdog copies it) */
  beforeExec?: (input: Buffer) => void;
  progress?: (s: Stats) => void;
  progressMs?: number;
  /** stop at the first finding */
  stopOnFinding?: boolean;
}

export interface FoundInput {
  kind: FindingKind;
  message: string;
  stack?: string;
  input: Buffer;
  /** name of the saved input that showed it, for replays */
  source?: string;
}

export interface Stats {
  target: string;
  runs: number;
  ms: number;
  perSecond: number;
  corpus: number;
  /** inputs kept because they reached new code */
  kept: number;
  blocks: number;
  findings: FoundInput[];
  /** outcome counts: ok, or the error class name */
  outcomes: Record<string, number>;
  maxAlloc: number;
  maxRss: number;
  slowestMs: number;
}

/** A finding's signature: its message with numbers and quoted parts blurred, for dedup. */
function signature(f: { kind: string; message: string }): string {
  return `${f.kind}:${f.message.replace(/\d+/g, 'N').replace(/"[^"]*"/g, 'S').slice(0, 160)}`;
}

export function loadInputs(dir: string): Array<{ name: string; data: Buffer }> {
  const out: Array<{ name: string; data: Buffer }> = [];
  const walk = (d: string, rel: string) => {
    let names: string[];
    try {
      names = readdirSync(d).sort();
    } catch {
      return;
    }
    for (const n of names) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) walk(p, `${rel}${n}/`);
      else if (n.endsWith('.bin')) out.push({ name: `${rel}${n}`, data: readFileSync(p) });
    }
  };
  walk(dir, '');
  return out;
}

export async function fuzz(target: Target, o: RunOptions): Promise<Stats & { newInputs: Buffer[] }> {
  installAllocGuard();
  const r = new Rng(o.seed);
  const slowMs = o.slowMs ?? 2000;
  const rssLimit = o.rssLimit ?? 1.5 * 1024 ** 3;
  const useCoverage = o.coverage ?? true;
  const cov = useCoverage ? new Coverage((url) => target.coverage.some((c) => url.includes(c))) : null;
  if (cov) await cov.start();

  const corpus: Buffer[] = [];
  const newInputs: Buffer[] = [];
  const findings: FoundInput[] = [];
  const seen = new Set<string>();
  const outcomes: Record<string, number> = {};
  const stats: Stats = { target: target.name, runs: 0, ms: 0, perSecond: 0, corpus: 0, kept: 0, blocks: 0, findings, outcomes, maxAlloc: 0, maxRss: 0, slowestMs: 0 };
  const t0 = performance.now();
  let stop = false;

  /** runs one input; returns true if it produced a (new or known) finding */
  const exec = async (input: Buffer, source?: string): Promise<boolean> => {
    o.beforeExec?.(input);
    allocMax = 0;
    const start = performance.now();
    let found: FoundInput | null = null;
    try {
      const label = (await target.run(input)) || 'ok';
      outcomes[label] = (outcomes[label] ?? 0) + 1;
    } catch (e) {
      if (e instanceof Finding) {
        found = { kind: e.kind, message: e.message, stack: (e.cause as Error | undefined)?.stack ?? e.stack, input, ...(source ? { source } : {}) };
      } else {
        // the target's run() lets the parser's clear errors through only via checkError
        found = { kind: 'crash', message: `fuzz target ${target.name} let through ${(e as Error)?.name}: ${(e as Error)?.message}`, stack: (e as Error)?.stack, input };
      }
    }
    const ms = performance.now() - start;
    stats.runs++;
    if (ms > stats.slowestMs) stats.slowestMs = ms;
    if (allocMax > stats.maxAlloc) stats.maxAlloc = allocMax;
    if (!found && allocMax > target.maxAlloc) {
      found = { kind: 'alloc', message: `one input made the parser allocate a buffer of ${allocMax} bytes (bound ${target.maxAlloc})`, input };
    }
    if (!found && ms > slowMs) {
      // once more, to tell a slow input from a busy machine or a GC pause
      const again = performance.now();
      try {
        await target.run(input);
      } catch {
        // outcome was checked the first time
      }
      const ms2 = performance.now() - again;
      if (ms2 > slowMs) found = { kind: 'hang', message: `one input took ${Math.round(Math.min(ms, ms2))} ms (budget ${slowMs} ms)`, input };
    }
    if (!found) return false;
    const sig = signature(found);
    if (!seen.has(sig)) {
      seen.add(sig);
      findings.push(found);
      if (o.stopOnFinding) stop = true;
    }
    return true;
  };

  // saved inputs and seeds first, each on its own
  for (const { name, data } of o.extra ?? []) {
    const bad = await exec(data, name);
    if (!bad) corpus.push(data);
  }
  for (const s of target.seeds()) if (!(await exec(s, 'built-in seed'))) corpus.push(s);
  if (!corpus.length) corpus.push(Buffer.alloc(0));
  if (cov) cov.add(await cov.take());

  const other = () => corpus[r.int(corpus.length)]!;
  const pickParent = () => (r.chance(0.4) ? corpus[corpus.length - 1 - r.int(Math.min(corpus.length, 32))]! : corpus[r.int(corpus.length)]!);
  const BATCH = 128;
  const batch: Buffer[] = [];
  let lastProgress = performance.now();
  let checked = 0;

  const flush = async () => {
    if (!cov || !batch.length) {
      batch.length = 0;
      return;
    }
    const ran = await cov.take();
    let pending = new Set(cov.novel(ran));
    if (pending.size) {
      // which inputs of the batch reached the new blocks
      for (const input of batch) {
        if (!pending.size) break;
        await exec(input);
        const mine = await cov.take();
        let hit = false;
        for (const k of mine) if (pending.has(k)) (hit = true), pending.delete(k);
        cov.add(mine);
        if (hit) {
          corpus.push(input);
          newInputs.push(input);
          stats.kept++;
        }
      }
      pending = new Set();
    }
    cov.add(ran);
    batch.length = 0;
  };

  const budget = Math.max(0, o.runs - stats.runs);
  for (let i = 0; i < budget && !stop; i++) {
    const parent = pickParent();
    let input: Buffer | null = null;
    if (target.mutate && r.chance(0.5)) input = target.mutate(parent, r, other);
    if (!input) input = mutateBytes(parent, r, { maxLen: target.maxLen, dictionary: target.dictionary, other });
    if (input.length > target.maxLen) input = input.subarray(0, target.maxLen);
    const bad = await exec(input);
    if (!bad) batch.push(input);
    // back to the event loop now and then: a loop of awaits alone never lets nextTick
    // callbacks and native finalizers run (closed zlib streams, zstd contexts), and memory
    // held by them would look like a leak of the parser
    if ((i & 127) === 127) await new Promise<void>((resolve) => setImmediate(resolve));
    if (batch.length >= BATCH) await flush();
    if (++checked >= 4096) {
      checked = 0;
      const rss = process.memoryUsage().rss;
      if (rss > stats.maxRss) stats.maxRss = rss;
      if (rss > rssLimit) {
        const f: FoundInput = { kind: 'alloc', message: `process RSS reached ${Math.round(rss / 2 ** 20)} MiB (bound ${Math.round(rssLimit / 2 ** 20)} MiB)`, input };
        if (!seen.has(signature(f))) (seen.add(signature(f)), findings.push(f));
        stop = true;
      }
      const now = performance.now();
      if (o.maxMs !== undefined && now - t0 > o.maxMs) break;
      if (o.progress && now - lastProgress > (o.progressMs ?? 10_000)) {
        lastProgress = now;
        o.progress(finishStats());
      }
    }
  }
  await flush();
  if (cov) await cov.stop();

  function finishStats(): Stats {
    stats.ms = performance.now() - t0;
    stats.perSecond = stats.runs / (stats.ms / 1000);
    stats.corpus = corpus.length;
    stats.blocks = cov ? cov.covered.size : 0;
    return stats;
  }
  return { ...finishStats(), newInputs };
}
