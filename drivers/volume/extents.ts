/**
 * The allocated (data) extents of a sparse regular file, from lseek(SEEK_DATA/SEEK_HOLE), so a
 * backup reads and hashes only what the file holds and records its holes as zero chunks
 * without reading them. Node has no lseek: a small helper does the seeking (Python's os.lseek
 * has SEEK_DATA/SEEK_HOLE, and python3 is part of the system the appliance installs) and
 * streams one "start end" line per extent; the pipe's back-pressure keeps memory bounded for
 * files of millions of extents. Where the helper cannot run, the file has no hole
 * information and every byte is read (correct, only slower): `dataExtents` then yields the
 * whole file as one extent.
 */
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

/** one allocated extent [start, end) */
export interface DataExtent {
  start: number;
  end: number;
}

const HELPER = `
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
end = os.fstat(fd).st_size
off = 0
out = sys.stdout
while off < end:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            break
        raise
    h = min(os.lseek(fd, d, os.SEEK_HOLE), end)
    if h > d:
        out.write("%d %d\\n" % (d, h))
    off = h
out.flush()
`;

// Debian's interpreter by its path: a `python3` found first on PATH may be a shim that runs a shell per call
const DEFAULT_PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
let python = DEFAULT_PYTHON;
let helperMissing = false;

/** the interpreter that runs the helper (tests: one that does not exist; no argument: the default again) */
export function useHoleHelper(interpreter = DEFAULT_PYTHON): void {
  python = interpreter;
  helperMissing = false;
}

/**
 * The data extents of the regular file at `path` of `size` bytes, ascending. A file that
 * changes while it is listed is the caller's business (a file volume is read live, as
 * before); a helper that fails yields what it listed and then the rest of the file as data.
 */
export async function* dataExtents(path: string, size: number): AsyncGenerator<DataExtent> {
  if (helperMissing) return yield* allData(size);
  const child = spawn(python, ['-c', HELPER, path], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderr.resume(); // a failure shows as its exit status; the rest of the file is then read as data
  const spawned = new Promise<boolean>((resolve) => {
    child.once('spawn', () => resolve(true));
    child.once('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') helperMissing = true;
      resolve(false);
    });
  });
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  let covered = 0;
  let ok = false;
  try {
    if (await spawned) {
      let bad = false;
      for await (const line of createInterface({ input: child.stdout, crlfDelay: Infinity })) {
        const m = /^(\d+) (\d+)$/.exec(line);
        const start = Number(m?.[1]);
        const end = Math.min(Number(m?.[2]), size);
        if (!m || start < covered || end <= start) {
          bad = true;
          break;
        }
        covered = end;
        yield { start, end };
      }
      if (bad) child.kill('SIGKILL');
      ok = (await exited) === 0 && !bad;
    }
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  // a helper that failed part way: what it did not list is read as data, never assumed a hole
  if (!ok && covered < size) yield { start: covered, end: size };
}

/** a device without hole information: all of it is data */
export async function* allData(size: number): AsyncGenerator<DataExtent> {
  if (size > 0) yield { start: 0, end: size };
}

/**
 * Walks the extents once for ascending queries: where the next data at or after an offset
 * starts, so a reader can pass over a whole run of holes at once.
 */
export class DataCursor {
  private cur: DataExtent | null = null;
  private done = false;
  private readonly it: AsyncIterator<DataExtent>;
  constructor(extents: AsyncIterable<DataExtent>) {
    this.it = extents[Symbol.asyncIterator]();
  }

  /** the first data byte at or after `offset` (Infinity: none) */
  async nextData(offset: number): Promise<number> {
    while (!this.done && (!this.cur || this.cur.end <= offset)) {
      const r = await this.it.next();
      if (r.done) {
        this.done = true;
        this.cur = null;
      } else this.cur = r.value;
    }
    return this.cur ? Math.max(offset, this.cur.start) : Infinity;
  }

  /** stops the listing (the backup ended early) */
  async close(): Promise<void> {
    await this.it.return?.(undefined);
  }
}
