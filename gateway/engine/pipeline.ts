/**
 * A bounded pipeline: runs `work(item, slot)` for the items of an iterable with at most
 * `depth` in flight, each with its own slot number (an index into per-slot buffers). The
 * first failure stops new work and is thrown once everything in flight settles.
 */
export async function runWindow<T>(
  items: Iterable<T> | AsyncIterable<T>,
  depth: number,
  work: (item: T, slot: number) => Promise<void>,
): Promise<void> {
  const freeSlots = Array.from({ length: depth }, (_, i) => depth - 1 - i);
  const running = new Set<Promise<void>>();
  let failure: unknown;
  for await (const item of items as AsyncIterable<T>) {
    if (failure !== undefined) break;
    while (freeSlots.length === 0) await Promise.race(running);
    if (failure !== undefined) break;
    const slot = freeSlots.pop()!;
    const p: Promise<void> = work(item, slot)
      .catch((e) => {
        failure ??= e;
      })
      .finally(() => {
        running.delete(p);
        freeSlots.push(slot);
      });
    running.add(p);
  }
  await Promise.all(running);
  if (failure !== undefined) throw failure;
}

/** Tracks the lowest index not yet done, for items completing out of order. */
export class LowWater {
  private readonly done = new Set<number>();
  constructor(private next = 0) {}
  complete(i: number): number {
    this.done.add(i);
    while (this.done.delete(this.next)) this.next++;
    return this.next;
  }
  get value(): number {
    return this.next;
  }
}

export function* range(n: number): Iterable<number> {
  for (let i = 0; i < n; i++) yield i;
}
