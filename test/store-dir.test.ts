/** The ObjectStore contract (test/helpers/store-contract.ts) against the directory driver. */
import test from 'ava';
import { DirStore } from '../drivers/store/dir.js';
import { objectStoreContract } from './helpers/store-contract.js';
import { tmpDir } from './helpers/core.js';

objectStoreContract(test, 'dir', async (t) => ({ store: new DirStore(tmpDir(t, 'bg-store-')) }), { manyKeys: 1100 });
