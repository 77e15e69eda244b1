import { KeelConfig, rolePassword } from '@keel/config';
import { provisionServiceSchema, ServiceSchema } from '@keel/database';
import { ServiceEntry } from './manifest';

/** A service's TypeORM migrations, in the order they run. */
export type Migrations = ServiceSchema['migrations'];

/**
 * The provisioning step of one service (`main.js --provision-only`, with the admin URL): its
 * role from the manifest with its own secret, its schema and its migrations.
 */
export async function provisionService(config: KeelConfig, entry: ServiceEntry, schema: string, migrations: Migrations): Promise<void> {
  if (!entry.role) throw new Error(`${entry.name} has no database in services.manifest.json, so there is nothing to provision; set "database": true on its line.`);
  await provisionServiceSchema(config.DATABASE_URL, { schema, role: entry.role, password: rolePassword(config, entry.role), migrations });
}
