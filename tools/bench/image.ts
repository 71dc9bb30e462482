/**
 * Benchmark fixtures: a realistic volume image. An ext4 filesystem (mkfs.ext4 -d) holding
 * text files, already-compressed data, duplicated files and free space (zeros), so backup
 * tools meet the mix a real disk has.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';

const WORDS = 'volume backup chunk block snapshot restore cinder ceph object replica quota project instance kernel page inode extent journal'.split(' ');

function textBlob(bytes: number): Buffer {
  const parts: string[] = [];
  let n = 0;
  let s = 7;
  while (n < bytes) {
    s = (s * 1103515245 + 12345) >>> 0;
    const line = `${new Date(1_700_000_000_000 + s).toISOString()} host${s % 17} ${WORDS[s % WORDS.length]} ${WORDS[(s >> 8) % WORDS.length]} id=${s.toString(16)} size=${s % 100000}\n`;
    parts.push(line);
    n += line.length;
  }
  return Buffer.from(parts.join('').slice(0, bytes));
}

/** Writes an ext4 image of `sizeMiB` about 70% full: 30% text, 25% random (compressed), 15% duplicates. */
export function makeFsImage(file: string, sizeMiB: number, workDir: string): void {
  const src = path.join(workDir, 'fs-src');
  fs.rmSync(src, { recursive: true, force: true });
  fs.mkdirSync(path.join(src, 'logs'), { recursive: true, mode: 0o700 });
  fs.mkdirSync(path.join(src, 'media'), { recursive: true, mode: 0o700 });
  fs.mkdirSync(path.join(src, 'copies'), { recursive: true, mode: 0o700 });
  const fileMiB = 8;
  const count = (share: number) => Math.max(1, Math.floor((sizeMiB * share) / fileMiB));
  for (let i = 0; i < count(0.3); i++) fs.writeFileSync(path.join(src, 'logs', `app-${i}.log`), textBlob(fileMiB * 1024 * 1024 - 1000 * i));
  const media: string[] = [];
  for (let i = 0; i < count(0.25); i++) {
    const f = path.join(src, 'media', `clip-${i}.bin`);
    fs.writeFileSync(f, randomBytes(fileMiB * 1024 * 1024), { mode: 0o600 });
    media.push(f);
  }
  for (let i = 0; i < count(0.15); i++) fs.copyFileSync(media[i % media.length]!, path.join(src, 'copies', `clip-${i}.bin`));
  fs.rmSync(file, { force: true });
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', src, file, `${sizeMiB}M`], { stdio: 'inherit' });
  fs.rmSync(src, { recursive: true, force: true });
}

/** A larger image made quickly: the fs image repeated with a random block every 64 MiB, then zeros. */
export function makeLargeImage(file: string, sizeMiB: number, seedImage: string): void {
  const fd = fs.openSync(file, 'w');
  const seed = fs.openSync(seedImage, 'r');
  const seedSize = fs.fstatSync(seed).size;
  const piece = Buffer.allocUnsafe(64 * 1024 * 1024);
  const end = sizeMiB * 1024 * 1024;
  for (let off = 0; off + seedSize <= end * 0.7; off += seedSize) {
    for (let at = 0; at < seedSize; ) {
      const n = fs.readSync(seed, piece, 0, Math.min(piece.length, seedSize - at), at);
      fs.writeSync(fd, piece, 0, n, off + at);
      at += n;
    }
    fs.writeSync(fd, randomBytes(4096), 0, 4096, off + 4096); // keep copies distinct enough
  }
  fs.closeSync(seed);
  fs.ftruncateSync(fd, end);
  fs.closeSync(fd);
}

/** Overwrites `fraction` of the image's 4 MiB blocks with new data (some text, some random). */
export function changeBlocks(file: string, fraction: number): number {
  const size = fs.statSync(file).size;
  const block = 4 * 1024 * 1024;
  const n = Math.floor(size / block);
  const fd = fs.openSync(file, 'r+');
  let changed = 0;
  for (let i = 0; i < n; i++) {
    if ((i * 2654435761) % 1000 < fraction * 1000) {
      fs.writeSync(fd, i % 2 ? randomBytes(64 * 1024) : textBlob(64 * 1024), 0, 64 * 1024, i * block + 8192);
      changed++;
    }
  }
  fs.closeSync(fd);
  return changed;
}
