/**
 * The NBD export registry: one ExportProvider for the server, made of sources (backups,
 * instant-restore sessions, ...) that each name and open their own exports. Names are
 * checked here once: nothing path-like reaches a source.
 */
import type { BlockDevice } from '../../nbd/blockdev.js';
import type { ExportInfo, ExportProvider } from '../../nbd/server.js';

export interface ExportSource {
  list(): ExportInfo[] | Promise<ExportInfo[]>;
  open(name: string): Promise<BlockDevice | null>;
  release?(name: string, dev: BlockDevice): Promise<void> | void;
}

export function safeExportName(name: string): boolean {
  return name.length > 0 && name.length <= 4096 && !name.includes('/') && !name.includes('\\') && !name.includes('\0') && name !== '.' && name !== '..' && !name.startsWith('..');
}

export class ExportRegistry implements ExportProvider {
  private readonly sources: ExportSource[] = [];
  private readonly openedBy = new WeakMap<BlockDevice, ExportSource>();
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

  async release(name: string, dev: BlockDevice): Promise<void> {
    const s = this.openedBy.get(dev);
    this.openedBy.delete(dev);
    if (!s) return;
    this.attached--;
    this.log('detach', { export: name });
    await s.release?.(name, dev);
  }
}
