import { DataSource } from 'typeorm';
import { KeelConfig } from '@keel/config';
import { tenantQuery } from '@keel/database';
import { Logger } from '@keel/observability';
import { AUTH_SCHEMA } from '../database/schema';
import { UsersService } from './users.service';

/** The first platform administrator, from KEEL_ADMIN_EMAIL / KEEL_ADMIN_PASSWORD, when there is none. */
export async function createFirstAdmin(ds: DataSource, users: UsersService, config: KeelConfig, logger: Logger): Promise<void> {
  const { KEEL_ADMIN_EMAIL: email, KEEL_ADMIN_PASSWORD: password } = config;
  if (!email || !password) return;
  const [{ n }] = await tenantQuery(ds, 'platform', `SELECT count(*)::int AS n FROM "${AUTH_SCHEMA}".email_reservations WHERE tenant_id = 'platform'`);
  if (n > 0) return;
  try {
    await users.createUser('platform', { email: email.toLowerCase(), name: 'Platform administrator', roles: ['platform_admin'], password }, {
      actor: { kind: 'system', id: 'first-start' },
      correlationId: 'first-start',
    }, '*');
    logger.info({ email }, 'first platform administrator created');
  } catch (error) {
    logger.warn({ err: error }, 'first platform administrator not created (another replica may have made it)');
  }
}
