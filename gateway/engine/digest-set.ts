/**
 * A set of 256-bit object names (64 hex characters) in 32 bytes each: an open-addressing
 * hash table over one byte array, probed linearly, the name's own first bytes as its hash
 * (names are SHA-256 or keyed-hash outputs, so uniform). GC's mark holds every live chunk and
 * page of the repository: a JS Set of hex strings costs about 100 bytes per name, this 41 to
 * 62 (33 bytes a slot, 53% to 80% full; it grows by half), so one GC marks about twice as
 * many blocks in the same memory. Exact, not probabilistic: GC may not keep the index entry of
 * a gone object because its name resembles a live one. (Hex digits in either case name the
 * same bytes.)
 */
const NAME = 32;
const MAX_LOAD = 0.8;
const GROWTH = 1.5;

export class DigestSet {
  private slots: Uint8Array;
  private used: Uint8Array;
  private capacity: number;
  private count = 0;
  private readonly probe = Buffer.alloc(NAME);

  constructor(expected = 1024) {
    this.capacity = Math.max(16, Math.ceil(expected / MAX_LOAD));
    this.slots = new Uint8Array(this.capacity * NAME);
    this.used = new Uint8Array(this.capacity);
  }

  get size(): number {
    return this.count;
  }

  /** adds a name; false if it was there already */
  add(hex: string): boolean {
    if (!this.parse(hex)) throw new Error(`not an object name: ${JSON.stringify(hex)}`);
    if (this.find() >= 0) return false;
    if ((this.count + 1) / this.capacity > MAX_LOAD) this.grow();
    this.insert(this.probe);
    return true;
  }

  /** (a string that is not a name is in no set) */
  has(hex: string): boolean {
    return this.parse(hex) && this.find() >= 0;
  }

  *[Symbol.iterator](): IterableIterator<string> {
    for (let i = 0; i < this.capacity; i++) if (this.used[i]) yield Buffer.from(this.slots.buffer, this.slots.byteOffset + i * NAME, NAME).toString('hex');
  }

  /** the name's bytes into this.probe; false if it is not 64 hex digits */
  private parse(hex: string): boolean {
    return hex.length === NAME * 2 && this.probe.write(hex, 0, 'hex') === NAME;
  }

  /** the slot holding the name in this.probe, or -1 */
  private find(): number {
    const p = this.probe;
    const n = this.capacity;
    for (let i = slotOf(p, n); this.used[i]; i = i + 1 === n ? 0 : i + 1) {
      if (equalAt(this.slots, i * NAME, p)) return i;
    }
    return -1;
  }

  private insert(name: Uint8Array): void {
    const n = this.capacity;
    let i = slotOf(name, n);
    while (this.used[i]) i = i + 1 === n ? 0 : i + 1;
    this.slots.set(name, i * NAME);
    this.used[i] = 1;
    this.count++;
  }

  private grow(): void {
    const { slots, used, capacity } = this;
    this.capacity = Math.ceil(capacity * GROWTH);
    this.slots = new Uint8Array(this.capacity * NAME);
    this.used = new Uint8Array(this.capacity);
    this.count = 0;
    for (let i = 0; i < capacity; i++) if (used[i]) this.insert(slots.subarray(i * NAME, (i + 1) * NAME));
  }
}

/** the home slot of a name among n: its first 32 bits scaled to [0, n) */
function slotOf(name: Uint8Array, n: number): number {
  const h = ((name[0]! << 24) | (name[1]! << 16) | (name[2]! << 8) | name[3]!) >>> 0;
  return Math.floor((h / 4294967296) * n);
}

function equalAt(slots: Uint8Array, at: number, name: Uint8Array): boolean {
  for (let k = 0; k < NAME; k++) if (slots[at + k] !== name[k]) return false;
  return true;
}
