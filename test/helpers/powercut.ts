/**
 * A disk with a volatile cache, for the directory store's write path (drivers/store/dir-ops.ts):
 * every operation is done on the real file system (so the store works as usual), and the
 * model keeps what a power cut could leave: a file's data is safe only once fdatasync'd; a
 * directory entry is safe only once its directory was fsync'd, and until then it may hold
 * any value it had since (the file system writes directory blocks back when it likes).
 * `cut()` tells, at that instant, whether an object file is certainly there and whole.
 */
import fs from 'node:fs';
import path from 'node:path';
import { type DirOps, nodeDirOps } from '../../drivers/store/dir-ops.js';

interface Inode {
  durable: boolean;
}

export interface PowerCutOptions {
  /** a wrong disk for the negative test: fdatasync of a path matching this does nothing */
  ignoreDatasync?: RegExp;
  /** datasync of a path matching this fails with EIO */
  failDatasync?: RegExp;
}

export class PowerCutOps implements DirOps {
  private next = 1;
  private readonly inodes = new Map<number, Inode>();
  /** path -> inode as the running system sees it */
  private readonly live = new Map<string, number>();
  /** path -> every inode (0: no entry) a power cut may leave there: the synced one and any since */
  private readonly candidates = new Map<string, Set<number>>();
  private readonly liveDirs = new Set<string>();
  private readonly durableDirs = new Set<string>();
  readonly root: string;

  constructor(root: string, private readonly opts: PowerCutOptions = {}) {
    this.root = path.resolve(root);
    this.durableDirs.add(this.root);
    this.liveDirs.add(this.root);
  }

  async mkdirp(dir: string, mode: number): Promise<void> {
    const made: string[] = [];
    for (let d = dir; !fs.existsSync(d); d = path.dirname(d)) made.push(d);
    await nodeDirOps.mkdirp(dir, mode);
    for (const d of made) this.liveDirs.add(d);
  }

  async writeNew(file: string, data: Buffer, mode: number): Promise<void> {
    await nodeDirOps.writeNew(file, data, mode);
    const id = this.next++;
    this.inodes.set(id, { durable: false });
    this.setLive(file, id);
  }

  private setLive(file: string, id: number | undefined): void {
    if (id === undefined) this.live.delete(file);
    else this.live.set(file, id);
    let c = this.candidates.get(file);
    if (!c) this.candidates.set(file, (c = new Set([0])));
    c.add(id ?? 0);
  }

  async datasync(file: string): Promise<void> {
    if (this.opts.failDatasync?.test(file)) throw Object.assign(new Error(`EIO: i/o error, fdatasync '${file}'`), { code: 'EIO' });
    await nodeDirOps.datasync(file);
    if (this.opts.ignoreDatasync?.test(file)) return;
    const id = this.live.get(file);
    if (id !== undefined) this.inodes.get(id)!.durable = true;
  }

  async link(from: string, to: string): Promise<void> {
    await nodeDirOps.link(from, to);
    this.setLive(to, this.live.get(from)!);
  }

  async rename(from: string, to: string): Promise<void> {
    await nodeDirOps.rename(from, to);
    this.setLive(to, this.live.get(from)!);
    this.setLive(from, undefined);
  }

  async unlink(file: string): Promise<void> {
    await nodeDirOps.unlink(file);
    this.setLive(file, undefined);
  }

  async syncDir(dir: string): Promise<void> {
    await nodeDirOps.syncDir(dir);
    for (const p of this.candidates.keys()) if (path.dirname(p) === dir) this.candidates.set(p, new Set([this.live.get(p) ?? 0]));
    for (const d of this.liveDirs) if (path.dirname(d) === dir) this.durableDirs.add(d);
  }

  /** the state of an object file after a power cut now: absent, torn (data not flushed) or whole */
  cut(): (file: string) => 'maybe absent' | 'maybe torn' | 'whole' {
    const entries = new Map([...this.candidates].map(([p, c]) => [p, [...c]]));
    const dirs = new Set(this.durableDirs);
    const durable = new Map([...this.inodes].map(([id, n]) => [id, n.durable]));
    return (file) => {
      for (let d = path.dirname(file); d !== this.root && d.length > this.root.length; d = path.dirname(d)) if (!dirs.has(d)) return 'maybe absent';
      const c = entries.get(file) ?? [0];
      if (c.includes(0)) return 'maybe absent';
      return c.every((id) => durable.get(id)) ? 'whole' : 'maybe torn';
    };
  }
}
