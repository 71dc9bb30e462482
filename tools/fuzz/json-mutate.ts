/** Structure-aware mutation of JSON documents: a random node replaced, removed, added or retyped. */
import type { Rng } from './rng.js';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const HEX64 = 'ab'.repeat(32);
const UUID = '0123abcd-0000-4000-8000-00000000cafe';

function interesting(r: Rng, depth = 0): Json {
  switch (r.int(22)) {
    case 0: return null;
    case 1: return r.chance(0.5);
    case 2: return r.pick([0, -1, 1, 0.5, -0, 511, 512, 513, 1e308, -1e308, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, 2 ** 64, 4096, 65536, 4194304]);
    case 3: return '';
    case 4: return 'x'.repeat(r.pick([1, 35, 36, 37, 63, 64, 65, 1000]));
    case 5: return HEX64;
    case 6: return HEX64.toUpperCase();
    case 7: return UUID;
    case 8: return '../'.repeat(4) + 'etc/passwd';
    case 9: return [];
    case 10: return {};
    case 11: return { toString: 1 };
    case 12: return { valueOf: 1, toString: 'x' };
    case 13: return [HEX64, HEX64];
    case 14: return depth < 3 ? [interesting(r, depth + 1)] : [];
    case 15: return depth < 3 ? { a: interesting(r, depth + 1) } : {};
    case 16: return '\u0000\ud800\uffff';
    case 17: return 'manifests/' + UUID + '.json';
    case 18: return Array.from({ length: r.pick([2, 100, 513]) }, () => HEX64);
    case 19: return String(r.next());
    case 20: return { __proto__x: 1, constructor: 1, hasOwnProperty: 1 } as unknown as Json;
    default: return r.next() % 1000;
  }
}

const KEYS = ['__proto__', 'constructor', 'toString', 'kind', 'format', 'map', 'pages', 'chunk_count', 'backup', 'volume', 'id', 'service', 'manifest', 'size_bytes', 'chunk_size', 'repository_id', ''];

function nodes(v: Json, out: Array<{ parent: Json[] | { [k: string]: Json }; key: string | number }>, parent?: Json[] | { [k: string]: Json }, key?: string | number): void {
  if (parent !== undefined && key !== undefined) out.push({ parent, key });
  if (Array.isArray(v)) v.forEach((x, i) => nodes(x, out, v, i));
  else if (v && typeof v === 'object') for (const k of Object.keys(v)) nodes(v[k]!, out, v, k);
}

/** Mutates a JSON value in place a few times; returns the new root. */
export function mutateJson(root: Json, r: Rng): Json {
  const k = 1 + r.int(3);
  for (let i = 0; i < k; i++) {
    const all: Array<{ parent: Json[] | { [k: string]: Json }; key: string | number }> = [];
    nodes(root, all);
    if (!all.length || r.chance(0.03)) {
      root = interesting(r);
      continue;
    }
    const { parent, key } = r.pick(all);
    const cur = (parent as Record<string | number, Json>)[key]!;
    switch (r.int(7)) {
      case 0:
      case 1:
        (parent as Record<string | number, Json>)[key] = interesting(r);
        break;
      case 2:
        if (Array.isArray(parent)) parent.splice(key as number, 1);
        else delete parent[key as string];
        break;
      case 3:
        if (Array.isArray(parent)) parent.splice(key as number, 0, cur);
        else Object.defineProperty(parent, r.pick(KEYS), { value: interesting(r), enumerable: true, configurable: true, writable: true });
        break;
      case 4:
        if (typeof cur === 'number') (parent as Record<string | number, Json>)[key] = r.pick([cur + 1, cur - 1, cur * 2, -cur, cur + 0.5, cur * 512, Math.floor(cur / 2)]);
        else if (typeof cur === 'string') (parent as Record<string | number, Json>)[key] = r.chance(0.5) ? cur.slice(0, r.int(cur.length + 1)) : cur + cur.slice(0, 1 + r.int(3));
        else (parent as Record<string | number, Json>)[key] = interesting(r);
        break;
      case 5:
        (parent as Record<string | number, Json>)[key] = typeof cur === 'string' && /^\d+$/.test(cur) ? Number(cur) : typeof cur === 'number' ? String(cur) : [cur];
        break;
      default:
        if (Array.isArray(cur) && cur.length) cur.push(...cur.slice(0, 1 + r.int(cur.length)));
        else (parent as Record<string | number, Json>)[key] = interesting(r);
    }
  }
  return root;
}

/** JSON text mutated structurally, or null when the text is not JSON. */
export function mutateJsonText(text: string, r: Rng): string | null {
  let v: Json;
  try {
    v = JSON.parse(text) as Json;
  } catch {
    return null;
  }
  return JSON.stringify(mutateJson(v, r));
}
