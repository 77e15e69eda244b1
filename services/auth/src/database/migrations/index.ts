import { CreateAuth1700000000010 } from './1700000000010-create-auth';
import { CreateMfa1700000000011 } from './1700000000011-create-mfa';
import { CreateSso1700000000012 } from './1700000000012-create-sso';
import { CreateRbac1700000000013 } from './1700000000013-create-rbac';
import { AuthRls1700000000014 } from './1700000000014-auth-rls';
import { AuthOutbox1700000000015 } from './1700000000015-auth-outbox';
import { AuthProjectionRebuild1700000000030 } from './1700000000030-auth-projection-rebuild';
import { SessionAuthTime1700000000040 } from './1700000000040-session-auth-time';
import { ApiKeyLifecycle1700000000055 } from './1700000000055-api-key-lifecycle';
import { SubjectKeys1700000000060 } from './1700000000060-subject-keys';

/** The auth schema's migrations, in the order the provisioning step runs them. */
export const AUTH_MIGRATIONS = [CreateAuth1700000000010, CreateMfa1700000000011, CreateSso1700000000012, CreateRbac1700000000013, AuthRls1700000000014, AuthOutbox1700000000015, AuthProjectionRebuild1700000000030, SessionAuthTime1700000000040, ApiKeyLifecycle1700000000055, SubjectKeys1700000000060];
