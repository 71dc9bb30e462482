/**
 * Samples of interleaved rounds (A B A B A B): every comparison in the bench runs each tool
 * ROUNDS times, alternating, and reports the median with its min and max. BENCH_QUICK=1 runs
 * one round (a smoke run, not a measurement); BENCH_ROUNDS=N sets another count.
 */
import os from 'node:os';
import type { Row } from './core.js';

export const ROUNDS = process.env.BENCH_QUICK === '1' ? 1 : Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3) || 3);

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

interface Series {
  seconds: number[];
  values: number[];
  rss: number[];
  stored: number[];
}

/** collects one suite's samples; `rows()` turns each (tool, op) into one Row of medians */
export class Samples {
  private readonly series = new Map<string, Series & { tool: string; op: string }>();
  constructor(readonly suite: string) {}

  private get(tool: string, op: string): Series {
    const key = `${tool}\u0000${op}`;
    let s = this.series.get(key);
    if (!s) this.series.set(key, (s = { tool, op, seconds: [], values: [], rss: [], stored: [] }));
    return s;
  }

  /** a timed run that moved `bytes` (throughput = bytes / seconds) */
  time(tool: string, op: string, seconds: number, bytes: number, rssMiB = 0, storedBytes?: number): void {
    const s = this.get(tool, op);
    s.seconds.push(seconds);
    s.values.push(bytes / 1e6 / seconds);
    s.rss.push(rssMiB);
    if (storedBytes !== undefined) s.stored.push(storedBytes);
  }

  /** a rate measured by the tool itself (IOPS), higher is better */
  rate(tool: string, op: string, value: number, seconds: number): void {
    const s = this.get(tool, op);
    s.seconds.push(seconds);
    s.values.push(value);
    s.rss.push(0);
  }

  rows(): Row[] {
    return [...this.series.values()].map((s) => {
      const v = median(s.values);
      const row: Row = {
        suite: this.suite,
        tool: s.tool,
        op: s.op,
        seconds: median(s.seconds),
        mbps: v,
        rssMiB: median(s.rss),
        min: Math.min(...s.values),
        max: Math.max(...s.values),
        runs: s.values.length,
      };
      if (s.stored.length) row.storedBytes = median(s.stored);
      console.error(`bench: ${this.suite} ${s.tool} ${s.op}: ${v.toFixed(1)} median [${row.min!.toFixed(1)}–${row.max!.toFixed(1)}] over ${s.values.length} rounds`);
      return row;
    });
  }
}

/** the machine a run was made on, printed and kept in results.json */
export function machine(): { cores: number; cpu: string; kernel: string; memGiB: number } {
  const cpus = os.cpus();
  return { cores: cpus.length, cpu: cpus[0]?.model ?? 'unknown', kernel: os.release(), memGiB: Math.round(os.totalmem() / 1024 ** 3) };
}
