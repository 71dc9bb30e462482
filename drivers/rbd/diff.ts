/**
 * RBD diff stream codec (`rbd export-diff` v1 and the v2 diffs inside
 * `rbd export --export-format 2`): format constants and types, the streaming reader and the
 * writer. See diff-format.ts for the layout.
 */
export * from './diff-format.js';
export { RbdDiffReader, readRbdDiff, type RbdDiffReaderOptions } from './diff-reader.js';
export { RbdDiffWriter, writeRbdDiff, type RbdDiffWriterOptions, type RbdDiffWriteResult } from './diff-writer.js';
