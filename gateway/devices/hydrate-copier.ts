/**
 * The background copier of a hydrating device: brings in, from the backup, the blocks nobody
 * touched, skipping owned ones; commits what it copied periodically (the device's sync, see
 * hydrate-ownership.ts) and reports completion once every block is owned and committed.
 *
 * Guest I/O goes first: a worker gives way while guest requests are in flight, and the copier
 * has its own concurrency and byte rate, both changeable while it runs. It never overwrites a
 * guest write with older backup data: it installs a block only through the device's copyIn,
 * which does so under the block's lock and only if the block is still not owned.
 */
import type { HydrateOptions } from './hydrate-types.js';
import type { Ownership } from './hydrate-ownership.js';

/** what the copier needs of its device */
export interface CopierHost {
  readonly blocks: number;
  readonly ownership: Ownership;
  blockLen(b: number): number;
  /** block b is a hole in the backup */
  isHole(b: number): boolean;
  /** the content block b must have when it is first owned (null: zeroes) */
  fetch(b: number): Promise<Buffer | null>;
  /** under b's lock, unless b is owned meanwhile or the device is dead: installs data, counts it, runs onCopied */
  copyIn(b: number, data: Buffer | null, onCopied?: () => void): Promise<void>;
  /** the device was shut down */
  isDead(): boolean;
  guestInFlight(): number;
  bytesCopied(): number;
  /** a sync in the background, its failure logged */
  backgroundSync(): void;
  /** runs p in the background; settle() waits for it */
  track(p: Promise<unknown>): void;
  log(event: string, fields: Record<string, unknown>): void;
}

export type CopierOptions = Pick<HydrateOptions, 'concurrency' | 'rateBytesPerSec' | 'syncIntervalMs' | 'guestYieldMs' | 'retries' | 'onComplete' | 'onError'>;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class Copier {
  private concurrency: number;
  private rate: number;
  private nextSlot = 0;
  private cursor = 0;
  private workers = 0;
  private copierOn = false;
  private stopped = false;
  private completing = false;
  private completed = false;
  private writeFailures = 0;
  private timer: NodeJS.Timeout | null = null;
  private readonly samples: { t: number; bytes: number }[] = [];

  constructor(
    private readonly host: CopierHost,
    private readonly opts: CopierOptions,
  ) {
    this.concurrency = Math.max(1, opts.concurrency ?? 4);
    this.rate = Math.max(0, opts.rateBytesPerSec ?? 0);
  }

  private get own(): Ownership {
    return this.host.ownership;
  }

  /** stopped (or failed): it copies no more, and copy-on-read stops too */
  get isStopped(): boolean {
    return this.stopped;
  }

  get isComplete(): boolean {
    return this.completed;
  }

  get running(): boolean {
    return this.workers > 0;
  }

  /** starts the background copy (and the periodic commit) */
  start(): void {
    if (this.stopped || this.copierOn) return;
    this.copierOn = true;
    const every = this.opts.syncIntervalMs ?? 1000;
    this.timer = setInterval(() => {
      if (this.own.needsSync(1)) this.host.backgroundSync();
    }, every);
    this.timer.unref();
    this.spawnWorkers();
    if (this.own.owned === this.host.blocks) this.host.track(this.finish());
  }

  private spawnWorkers(): void {
    while (this.copierOn && !this.stopped && this.workers < this.concurrency && this.cursor < this.host.blocks) {
      this.workers++;
      this.host.track(this.worker());
    }
  }

  /** changes the copier's concurrency and rate (bytes/s, 0 = unlimited) while it runs */
  setThrottle(t: { concurrency?: number; rate?: number }): void {
    if (t.concurrency !== undefined) this.concurrency = Math.max(1, Math.floor(t.concurrency));
    if (t.rate !== undefined) {
      this.rate = Math.max(0, t.rate);
      this.nextSlot = 0;
    }
    this.spawnWorkers();
  }

  get throttle(): { concurrency: number; rate: number } {
    return { concurrency: this.concurrency, rate: this.rate };
  }

  private nextBlock(): number {
    while (this.cursor < this.host.blocks) {
      const b = this.cursor++;
      if (!this.own.isOwned(b)) return b;
    }
    return -1;
  }

  private async pace(bytes: number): Promise<void> {
    if (this.rate <= 0) return;
    const now = Date.now();
    const at = Math.max(now, this.nextSlot);
    this.nextSlot = at + (bytes / this.rate) * 1000;
    while (!this.stopped && this.rate > 0 && Date.now() < at) await sleep(Math.min(100, at - Date.now()));
  }

  /** guest I/O first: wait (a little) while guest requests are in flight */
  private async giveWay(): Promise<void> {
    const limit = this.opts.guestYieldMs ?? 50;
    const until = Date.now() + limit;
    while (this.host.guestInFlight() > 0 && !this.stopped && Date.now() < until) await sleep(1);
  }

  private async worker(): Promise<void> {
    const host = this.host;
    try {
      for (;;) {
        if (this.stopped || host.isDead()) return;
        if (this.workers > this.concurrency) return;
        const b = this.nextBlock();
        if (b < 0) return;
        await this.giveWay();
        await this.pace(host.isHole(b) ? 0 : host.blockLen(b));
        if (this.stopped) return;
        if (this.own.isOwned(b)) continue;
        let data: Buffer | null;
        try {
          data = await this.fetchWithRetry(b);
        } catch (e) {
          if (this.stopped) return;
          host.log('copy-failed', { block: b, error: (e as Error).message });
          this.stopped = true;
          this.opts.onError?.(e as Error);
          return;
        }
        if (this.stopped) return;
        try {
          // a guest write that got there first is kept: copyIn installs only into a block not owned
          await host.copyIn(b, data, () => this.sample());
          this.writeFailures = 0;
        } catch (e) {
          host.log('copy-write-failed', { block: b, error: (e as Error).message });
          if (++this.writeFailures > (this.opts.retries ?? 4)) {
            this.stopped = true;
            this.opts.onError?.(new Error(`cannot write block ${b} into the target: ${(e as Error).message}`));
            return;
          }
          await sleep(200);
        }
      }
    } finally {
      this.workers--;
      if (this.workers === 0 && !this.stopped && !host.isDead()) {
        if (this.own.owned === host.blocks) host.track(this.finish());
        else if (this.cursor >= host.blocks) {
          // blocks left behind (a worker stood down, or a write failed): another pass
          this.cursor = 0;
          setTimeout(() => this.spawnWorkers(), 100).unref();
        }
      }
    }
  }

  private async fetchWithRetry(b: number): Promise<Buffer | null> {
    const tries = (this.opts.retries ?? 4) + 1;
    for (let i = 1; ; i++) {
      try {
        return await this.host.fetch(b);
      } catch (e) {
        if (i >= tries || this.stopped) throw e;
        this.host.log('copy-retry', { block: b, attempt: i, error: (e as Error).message });
        await sleep(Math.min(5000, 200 * 2 ** i));
      }
    }
  }

  private sample(): void {
    const t = Date.now();
    const bytes = this.host.bytesCopied();
    const last = this.samples.at(-1);
    if (last && t - last.t < 250) {
      last.bytes = bytes;
      return;
    }
    this.samples.push({ t, bytes });
    while (this.samples.length > 2 && t - this.samples[0]!.t > 5000) this.samples.shift();
  }

  /** bytes/s brought in over the last few seconds */
  measuredRate(): number {
    const t = Date.now();
    let rate = 0;
    const first = this.samples[0];
    const last = this.samples.at(-1);
    if (first && last && last !== first && t - last.t < 3000) rate = ((last.bytes - first.bytes) / (last.t - first.t)) * 1000;
    return rate;
  }

  /** every block owned: commit them all, then report completion once */
  async finish(): Promise<void> {
    if (this.completing || this.completed) return;
    this.completing = true;
    try {
      while (this.own.durable < this.host.blocks && !this.host.isDead()) await this.own.sync('background');
      if (this.host.isDead()) return;
      this.completed = true;
      this.stopTimer();
      this.host.log('hydrated', { blocks: this.host.blocks, bytesCopied: this.host.bytesCopied() });
      this.opts.onComplete?.();
    } catch (e) {
      this.host.log('sync-failed', { error: (e as Error).message });
      this.completing = false;
      setTimeout(() => this.host.track(this.finish()), 1000).unref();
    }
  }

  private stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** stops the background copy; guest I/O goes on */
  async stop(): Promise<void> {
    this.stopped = true;
    this.stopTimer();
    while (this.workers > 0) await sleep(5);
  }
}
