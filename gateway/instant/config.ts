/** The `instant` section of blockgate.json, typed and checked by gateway/config.ts. */
import type { Appliance } from '../appliance.js';
import type { InstantConfig } from '../config.js';

export type { InstantConfig } from '../config.js';

export function instantConfig(app: Appliance): InstantConfig {
  return app.config.instant;
}
