/**
 * Moved to blockdev/types.ts (the bottom of the tree). This re-export keeps code written
 * before the move compiling until every import is switched; new code imports blockdev/.
 */
export * from '../blockdev/types.js';
