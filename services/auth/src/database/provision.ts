import { KeelConfig, rolePassword } from '@keel/config';
import { provisionServiceSchema } from '@keel/database';
import { CreateAuth1700000000010 } from './migrations/1700000000010-create-auth';
import { CreateMfa1700000000011 } from './migrations/1700000000011-create-mfa';
import { CreateSso1700000000012 } from './migrations/1700000000012-create-sso';
import { CreateRbac1700000000013 } from './migrations/1700000000013-create-rbac';
import { AuthRls1700000000014 } from './migrations/1700000000014-auth-rls';
import { AuthOutbox1700000000015 } from './migrations/1700000000015-auth-outbox';
import { AuthProjectionRebuild1700000000030 } from './migrations/1700000000030-auth-projection-rebuild';
import { AUTH_ROLE, AUTH_SCHEMA } from './schema';

export async function provisionAuth(config: KeelConfig): Promise<void> {
  await provisionServiceSchema(config.DATABASE_URL, {
    schema: AUTH_SCHEMA,
    role: AUTH_ROLE,
    password: rolePassword(config, AUTH_ROLE),
    migrations: [CreateAuth1700000000010, CreateMfa1700000000011, CreateSso1700000000012, CreateRbac1700000000013, AuthRls1700000000014, AuthOutbox1700000000015, AuthProjectionRebuild1700000000030],
  });
}
