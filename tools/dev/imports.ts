/**
 * The import graph of the project's own modules (static and dynamic imports; `import type`
 * is left out, as it is erased at compile time), its cycles, and who imports what across
 * layers. `node dist/tools/dev/imports.js [ROOT]` prints the cycles and exits 1
 * when there is one; the tests call `importCycles` and `importsOf` directly.
 */
import fs from 'node:fs';
import path from 'node:path';

const SKIP = new Set(['node_modules', 'dist', '.git', '.bench']);

function sources(root: string, dir = root, out: string[] = []): string[] {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (SKIP.has(e.name) || e.name.startsWith('.')) continue;
    const p = path.join(dir, e.name);
    if (e.isDirectory()) sources(root, p, out);
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(path.relative(root, p));
  }
  return out;
}

const IMPORT = /(?:^|[\s;])(?:import|export)\s(?!type\s)[^'"`;]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g;

/** module (path relative to root, .ts) → the project modules it imports */
export function importGraph(root: string): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of sources(root)) {
    const text = fs.readFileSync(path.join(root, file), 'utf8');
    const deps = new Set<string>();
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2]!;
      if (!spec.startsWith('.')) continue;
      const target = path.normalize(path.join(path.dirname(file), spec)).replace(/\.js$/, '.ts');
      if (fs.existsSync(path.join(root, target))) deps.add(target);
    }
    graph.set(file, [...deps].sort());
  }
  return graph;
}

/** every strongly connected set of more than one module (or a module importing itself) */
export function importCycles(graph: Map<string, string[]>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(scc.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!idx.has(v)) visit(v);
  return out;
}

/** the imports from modules under `from` (a folder prefix) into modules under `into` */
export function crossImports(graph: Map<string, string[]>, from: (m: string) => boolean, into: string): [string, string][] {
  const hits: [string, string][] = [];
  for (const [m, deps] of graph) if (from(m)) for (const d of deps) if (d.startsWith(into)) hits.push([m, d]);
  return hits;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const root = path.resolve(process.argv[2] ?? '.');
  const cycles = importCycles(importGraph(root));
  for (const c of cycles) console.log(`cycle: ${c.join(' <-> ')}`);
  console.log(`${cycles.length} import cycle(s)`);
  process.exitCode = cycles.length ? 1 : 0;
}
