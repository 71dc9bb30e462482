/** CLI output: tables by default, JSON with -f json; progress bars on a TTY only; errors to stderr. */
import Table from 'cli-table3';
import cliProgress from 'cli-progress';
import { ConflictError, NotFoundError } from '../../catalog/catalog.js';
import { InvalidNameError } from '../../gateway/names.js';
import { KeyError } from '../../drivers/crypto.js';
import { formatSize } from '../../gateway/size.js';

export type Format = 'table' | 'json';

export function printRows(format: Format, rows: Record<string, unknown>[], columns: string[]): void {
  if (format === 'json') {
    process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
    return;
  }
  const t = new Table({ head: columns, style: { head: [], border: [] } });
  for (const r of rows) t.push(columns.map((c) => cell(r[c])));
  process.stdout.write(t.toString() + '\n');
}

export function printRecord(format: Format, rec: object): void {
  if (format === 'json') {
    process.stdout.write(JSON.stringify(rec, null, 2) + '\n');
    return;
  }
  const t = new Table({ head: ['Property', 'Value'], style: { head: [], border: [] } });
  for (const [k, v] of Object.entries(rec)) t.push([k, cell(v)]);
  process.stdout.write(t.toString() + '\n');
}

function cell(v: unknown): string {
  if (v === null || v === undefined) return '-';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

export function progressBar(label: string): { update(done: number, total: number): void; stop(): void } {
  if (!process.stderr.isTTY) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar(
    { format: `${label} [{bar}] {percentage}% {done}/{all} {rate}`, stream: process.stderr, hideCursor: true, clearOnComplete: false },
    cliProgress.Presets.shades_classic,
  );
  const start = Date.now();
  let started = false;
  return {
    update(done, total) {
      const rate = `${formatSize(done / Math.max(0.001, (Date.now() - start) / 1000))}/s`;
      const payload = { done: formatSize(done), all: formatSize(total), rate };
      if (!started) {
        bar.start(total, done, payload);
        started = true;
      } else {
        bar.setTotal(total);
        bar.update(done, payload);
      }
    },
    stop() {
      if (started) bar.stop();
    },
  };
}

/** Exit codes: 1 failure, 2 bad usage or input, 3 not found, 4 conflict with the current state. */
export function exitCodeFor(e: unknown): number {
  if (e instanceof NotFoundError) return 3;
  if (e instanceof ConflictError) return 4;
  if (e instanceof UsageError || e instanceof InvalidNameError || e instanceof KeyError) return 2;
  return 1;
}

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}
