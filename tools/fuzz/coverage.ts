/**
 * Coverage feedback from V8's own block coverage (the inspector's Profiler precise coverage,
 * binary mode, in this isolate). No instrumentation and no native module: a take returns the
 * blocks executed since the previous take, of the scripts the target cares about.
 *
 * V8 reports, per executed function, only the blocks whose execution differs from the block
 * around them, so a block that ran is often absent from the report. Every block ever reported
 * is remembered, and a block counts as executed in a take when the innermost reported range
 * around it (itself included) ran.
 */
import { Session } from 'node:inspector';

interface Range {
  startOffset: number;
  endOffset: number;
  count: number;
}
interface FunctionCoverage {
  ranges: Range[];
}
interface ScriptCoverage {
  url: string;
  functions: FunctionCoverage[];
}

function post<T>(s: Session, method: string, params?: object): Promise<T> {
  return new Promise((resolve, reject) =>
    s.post(method, params ?? {}, (err, res) => (err ? reject(err) : resolve(res as T))),
  );
}

export class Coverage {
  private readonly session = new Session();
  /** per function (url:start), every block range ever seen: [start, end] */
  private readonly blocks = new Map<string, Array<[number, number]>>();
  private readonly blockKeys = new Set<string>();
  /** blocks known to have run */
  readonly covered = new Set<string>();
  private started = false;

  constructor(private readonly wanted: (url: string) => boolean) {}

  async start(): Promise<void> {
    this.session.connect();
    await post(this.session, 'Profiler.enable');
    await post(this.session, 'Profiler.startPreciseCoverage', { callCount: false, detailed: true });
    this.started = true;
  }

  async stop(): Promise<void> {
    if (!this.started) return;
    await post(this.session, 'Profiler.stopPreciseCoverage');
    await post(this.session, 'Profiler.disable');
    this.session.disconnect();
    this.started = false;
  }

  /** Blocks executed since the last take (keys "url:start-end"). */
  async take(): Promise<Set<string>> {
    const { result } = await post<{ result: ScriptCoverage[] }>(this.session, 'Profiler.takePreciseCoverage');
    const ran = new Set<string>();
    for (const script of result) {
      if (!this.wanted(script.url)) continue;
      for (const fn of script.functions) {
        const ranges = fn.ranges;
        if (!ranges.length || ranges[0]!.count === 0) continue;
        const fkey = `${script.url}:${ranges[0]!.startOffset}`;
        let known = this.blocks.get(fkey);
        if (!known) this.blocks.set(fkey, (known = []));
        for (const r of ranges) {
          const k = `${script.url}:${r.startOffset}-${r.endOffset}`;
          if (!this.blockKeys.has(k)) {
            this.blockKeys.add(k);
            known.push([r.startOffset, r.endOffset]);
          }
        }
        for (const [s, e] of known) {
          // innermost reported range containing [s, e)
          let best: Range | null = null;
          for (const r of ranges) {
            if (r.startOffset <= s && e <= r.endOffset && (!best || r.endOffset - r.startOffset <= best.endOffset - best.startOffset)) best = r;
          }
          if (best && best.count > 0) ran.add(`${script.url}:${s}-${e}`);
        }
      }
    }
    return ran;
  }

  /** Of `ran`, the blocks not covered before. */
  novel(ran: Set<string>): string[] {
    const out: string[] = [];
    for (const k of ran) if (!this.covered.has(k)) out.push(k);
    return out;
  }

  add(ran: Iterable<string>): void {
    for (const k of ran) this.covered.add(k);
  }
}
