import test from 'ava';
import { randomBytes } from 'node:crypto';
import { CODECS } from '../drivers/codec.js';
import { CHUNK_HEADER, ChunkCorruptError, checkChunkSize, decodeChunk, encodeChunk, isAllZero, sha256 } from '../drivers/chunk.js';

const text = Buffer.from('block volumes back up well when they repeat themselves. '.repeat(4000));

for (const codec of CODECS) {
  test(`chunk round trip with ${codec}`, (t) => {
    for (const plain of [text, randomBytes(100_000), Buffer.alloc(1)]) {
      const digest = sha256(plain).toString('hex');
      const enc = encodeChunk(plain, codec);
      t.is(enc.object.subarray(0, 4).toString(), 'BGCK');
      t.is(enc.object[4], 1);
      t.is(enc.object.readUInt32BE(8), plain.length);
      t.true(decodeChunk(enc.object, digest).equals(plain));
    }
    if (codec !== 'none') t.true(encodeChunk(text, codec).object.length < text.length / 5, 'text compresses');
  });
}

test('a chunk that does not shrink is stored uncompressed', (t) => {
  const plain = randomBytes(65536);
  const enc = encodeChunk(plain, 'zstd');
  t.is(enc.codec, 'none');
  t.is(enc.object[5], 0);
  t.is(enc.object.length, plain.length + CHUNK_HEADER);
});

test('a flipped byte is reported as a corrupt chunk naming its digest', (t) => {
  const digest = sha256(text).toString('hex');
  for (const codec of CODECS) {
    const obj = Buffer.from(encodeChunk(text, codec).object);
    obj[obj.length - 7] ^= 0x40;
    const err = t.throws(() => decodeChunk(obj, digest), { instanceOf: ChunkCorruptError });
    t.regex(err!.message, new RegExp(digest));
  }
  const bad = Buffer.from(encodeChunk(text, 'zstd').object);
  bad[0] = 0x41;
  t.throws(() => decodeChunk(bad, digest), { message: /bad header magic/ });
});

test('chunk sizes are powers of two from 8K (packed) to 16M', (t) => {
  t.is(checkChunkSize(8192), 8192);
  t.is(checkChunkSize(65536), 65536);
  t.is(checkChunkSize(16 * 1024 * 1024), 16 * 1024 * 1024);
  for (const bad of [4096, 3 * 1024 * 1024, 32 * 1024 * 1024, 0, 1.5]) t.throws(() => checkChunkSize(bad));
});

test('zero detection', (t) => {
  t.true(isAllZero(Buffer.alloc(300_000)));
  const b = Buffer.alloc(300_000);
  b[299_999] = 1;
  t.false(isAllZero(b));
});
