/**
 * The shape of the module tree: no import cycle anywhere (static and dynamic imports), and
 * blockdev/ at the bottom, importing nothing else of ours.
 */
import test from 'ava';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { crossImports, importCycles, importGraph } from '../tools/dev/imports.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const graph = importGraph(root);

test('the graph is read from the sources: the daemon, the NBD server and the engine are in it with their imports', (t) => {
  t.true(graph.size > 100);
  t.true(graph.get('gateway/daemon.ts')!.includes('nbd/server.ts'));
  t.true(graph.get('nbd/server.ts')!.length > 0);
  t.true(graph.get('gateway/engine/restore.ts')!.includes('gateway/engine/restore-rbd.ts'));
});

test('no import cycle anywhere in the project', (t) => {
  t.deepEqual(importCycles(graph), []);
});

test('the cycle finder finds a cycle (self-check on a made-up graph)', (t) => {
  const g = new Map([
    ['a.ts', ['b.ts']],
    ['b.ts', ['c.ts']],
    ['c.ts', ['a.ts', 'd.ts']],
    ['d.ts', []],
  ]);
  t.deepEqual(importCycles(g), [['a.ts', 'b.ts', 'c.ts']]);
});

test('blockdev/ imports nothing of ours outside blockdev/', (t) => {
  t.deepEqual(crossImports(graph, (m) => m.startsWith('blockdev/'), '').filter(([, d]) => !d.startsWith('blockdev/')), []);
});

test('outside nbd/, only the daemon that starts the server imports nbd/ (types aside)', (t) => {
  const app = (m: string) => !m.startsWith('nbd/') && !m.startsWith('test/') && !m.startsWith('tools/');
  t.deepEqual(crossImports(graph, app, 'nbd/'), [['gateway/daemon.ts', 'nbd/server.ts']]);
});
