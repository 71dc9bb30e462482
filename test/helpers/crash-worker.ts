/**
 * A stand-in chunk worker for the pool tests: answers `hash` tasks as the real one does, but
 * a hash task of length 7 throws out of the message handler, an uncaught error that kills
 * the worker (as an out-of-memory or a native fault would) without an answer.
 */
import { parentPort } from 'node:worker_threads';
import { isAllZero, sha256 } from '../../drivers/chunk.js';

parentPort!.on('message', (t: { id: number; op: string; buf: ArrayBuffer; length: number }) => {
  if (t.op !== 'hash') {
    parentPort!.postMessage({ id: t.id, ok: false, error: `the test worker only hashes (${t.op})`, name: 'Error' });
    return;
  }
  if (t.length === 7) throw new Error('poisoned task');
  const data = Buffer.from(t.buf, 0, t.length);
  const zero = isAllZero(data);
  parentPort!.postMessage({ id: t.id, ok: true, buf: t.buf, digest: zero ? '' : sha256(data).toString('hex'), zero }, [t.buf]);
});
