/**
 * The NBD export registry: one ExportProvider for the server, made of sources (backups,
 * instant-restore sessions, ...) that each name and open their own exports. Names are
 * checked here once: nothing path-like reaches a source.
 *
 * Any export can be narrowed to one partition of the disk it holds: `NAME/partN` (N as Linux
 * numbers partitions, MBR or GPT) is the window of partition N of export NAME, read-only —
 * the partition filter stacked on whatever the source opened.
 */
import { readPartitionTable } from '../../blockdev/partitions.js';
import type { BlockDevice } from '../../blockdev/types.js';
import { WindowDevice } from '../../blockdev/window.js';
import type { ExportInfo, ExportProvider } from '../../nbd/server.js';

export interface ExportSource {
  list(): ExportInfo[] | Promise<ExportInfo[]>;
  open(name: string): Promise<BlockDevice | null>;
  release?(name: string, dev: BlockDevice): Promise<void> | void;
}

export function safeExportName(name: string): boolean {
  return name.length > 0 && name.length <= 4096 && !name.includes('/') && !name.includes('\\') && !name.includes('\0') && name !== '.' && name !== '..' && !name.startsWith('..');
}

/** `NAME/partN` → { base: NAME, part: N }; null for any other name */
export function partitionExportName(name: string): { base: string; part: number } | null {
  const m = /^(.+)\/part([1-9][0-9]{0,3})$/.exec(name);
  return m && safeExportName(m[1]!) ? { base: m[1]!, part: Number(m[2]) } : null;
}

export class ExportRegistry implements ExportProvider {
  private readonly sources: ExportSource[] = [];
  private readonly openedBy = new WeakMap<BlockDevice, ExportSource>();
  /** a partition window → the device its source opened (released with it) */
  private readonly windows = new WeakMap<BlockDevice, { name: string; base: BlockDevice }>();
  attached = 0;

  constructor(private readonly log: (event: string, fields: Record<string, unknown>) => void = () => {}) {}

  addSource(s: ExportSource): void {
    this.sources.push(s);
  }

  async list(): Promise<ExportInfo[]> {
    const all = await Promise.all(this.sources.map((s) => s.list()));
    return all.flat();
  }

  async open(name: string): Promise<BlockDevice | null> {
    const part = partitionExportName(name);
    if (part) return this.openPartition(name, part.base, part.part);
    if (!safeExportName(name)) return null;
    for (const s of this.sources) {
      const dev = await s.open(name);
      if (dev) {
        this.openedBy.set(dev, s);
        this.attached++;
        this.log('attach', { export: name, size: dev.size, readOnly: dev.readOnly });
        return dev;
      }
    }
    return null;
  }

  private async openPartition(name: string, baseName: string, number: number): Promise<BlockDevice | null> {
    const base = await this.open(baseName);
    if (!base) return null;
    try {
      const table = await readPartitionTable((o, l) => base.read(o, l), base.size);
      const p = table.partitions.find((x) => x.number === number);
      if (!p) throw new Error(`export ${JSON.stringify(baseName)} has no partition ${number} (${table.scheme === 'none' ? 'no partition table' : `${table.scheme}: ${table.partitions.map((x) => x.number).join(', ') || 'none'}`})`);
      const win = new WindowDevice(base, p.offset, p.size, { owns: false });
      this.windows.set(win, { name: baseName, base });
      this.log('attach', { export: name, size: win.size, readOnly: true, partition: number });
      return win;
    } catch (e) {
      await this.release(baseName, base);
      throw e;
    }
  }

  async release(name: string, dev: BlockDevice): Promise<void> {
    const w = this.windows.get(dev);
    if (w) {
      this.windows.delete(dev);
      this.log('detach', { export: name });
      return this.release(w.name, w.base);
    }
    const s = this.openedBy.get(dev);
    this.openedBy.delete(dev);
    if (!s) return;
    this.attached--;
    this.log('detach', { export: name });
    await s.release?.(name, dev);
  }
}
