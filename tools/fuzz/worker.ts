/** Runs one fuzz target in a worker thread, so the runner can stop an input that blocks it. */
import { parentPort, workerData } from 'node:worker_threads';
import { fuzz, loadInputs, type Stats } from './engine.js';
import { targetByName } from './targets.js';

interface Job {
  target: string;
  runs: number;
  seed: number;
  coverage: boolean;
  slowMs: number;
  rssLimit: number;
  fixtures: string;
  /** [0] = input length, [1] = runs so far; then the input bytes */
  shared: SharedArrayBuffer;
}

const job = workerData as Job;
const head = new Int32Array(job.shared, 0, 2);
const bytes = new Uint8Array(job.shared, 8);

const strip = (s: Stats) => ({ ...s, findings: s.findings.map((f) => ({ ...f, input: undefined })) });

const result = await fuzz(targetByName(job.target), {
  runs: job.runs,
  seed: job.seed,
  coverage: job.coverage,
  slowMs: job.slowMs,
  rssLimit: job.rssLimit,
  extra: loadInputs(job.fixtures),
  beforeExec: (input) => {
    const n = Math.min(input.length, bytes.length);
    bytes.set(input.subarray(0, n));
    Atomics.store(head, 0, n);
    Atomics.add(head, 1, 1);
  },
  progress: (s) => parentPort!.postMessage({ type: 'progress', stats: strip(s) }),
  progressMs: 15_000,
});
parentPort!.postMessage({
  type: 'done',
  stats: strip(result),
  findings: result.findings.map((f) => ({ kind: f.kind, message: f.message, stack: f.stack, source: f.source, input: new Uint8Array(f.input) })),
  newInputs: result.newInputs.map((b) => new Uint8Array(b)),
});
