/** What every CLI verb shares: the global options and an appliance opened for one command. */
import { Appliance } from '../../gateway/appliance.js';
import { loadConfig } from '../../gateway/config.js';
import type { Format } from './output.js';

export interface Globals {
  dataDir?: string;
  format: Format;
}

export async function withApp<T>(g: Globals, fn: (app: Appliance) => Promise<T>): Promise<T> {
  const app = await Appliance.open(loadConfig(g.dataDir));
  try {
    return await fn(app);
  } finally {
    await app.close();
  }
}
