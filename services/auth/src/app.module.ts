import { DataSource } from 'typeorm';
import Redis from 'ioredis';
import { Subscription } from 'nats';
import { KeelConfig } from '@keel/config';
import { kekFrom } from '@keel/crypto';
import { ALL_TENANTS } from '@keel/database';
import { Outbox, outboxCheck } from '@keel/event-sourcing';
import { KEEL_LOGGER, MESSAGING, Messaging, patternsOf, RpcClient } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { serviceModule } from '@keel/service-kit';
import { ApiKeysService } from './api-keys/api-keys.service';
import { AUTH_SCHEMA, CROSS_TENANT_DS } from './database/schema';
import { TokenKeys } from './keys/token-keys';
import { MfaService } from './mfa/mfa.service';
import { RbacService } from './rbac/rbac.service';
import { RoleCatalog } from './rbac/role-catalog';
import { SessionRevoker } from './sessions/session-revoker';
import { SessionsService } from './sessions/sessions.service';
import { ExternalIdentities } from './sso/external-identities';
import { IdentityProvidersService } from './sso/identity-providers.service';
import { OidcClient } from './sso/oidc-client';
import { SESSION_STARTER, SessionStarter } from './sso/session-starter';
import { SsoService } from './sso/sso.service';
import { SsoStates } from './sso/sso-states';
import { SignInAlerts } from './security/sign-in-alerts';
import { createFirstAdmin } from './users/first-admin';
import { Lockout } from './users/lockout';
import { TenantLookup } from './users/tenant-lookup';
import { UsersProjection } from './users/users.projection';
import { UsersService } from './users/users.service';
import { PersonalDataService } from './personal-data/personal-data.service';
import { SubjectKeyStore } from './personal-data/subject-keys';
import { ErasuresProjection } from './personal-data/erasures.projection';

/** The runner of the erasures projection (the users read model's is ProjectionRunner itself). */
const ERASURES_RUNNER = Symbol('ERASURES_RUNNER');

export function authModule(config: KeelConfig, logger: Logger) {
  let keyRotations: Subscription | undefined;
  return serviceModule({
    name: 'auth',
    config,
    logger,
    // Refreshes, and the outbox relay (its leadership lock, LISTEN and the batches of every tenant).
    dataSources: [{ provide: CROSS_TENANT_DS, label: 'cross-tenant', poolSize: 8, scope: ALL_TENANTS }],
    redis: true,
    projections: [
      { projection: { useFactory: () => new UsersProjection() } },
      // Erasures applied from the log: finished after a crash, applied again after a key store is restored.
      { provide: ERASURES_RUNNER, projection: { useFactory: (pd: PersonalDataService, log: Logger) => new ErasuresProjection(pd, log), inject: [PersonalDataService, KEEL_LOGGER] } },
    ],
    // The data keys of personal data are this service's: sealed and opened from its own store.
    subjectKeys: { useFactory: (store: SubjectKeyStore) => store, inject: [SubjectKeyStore] },
    providers: [
      { provide: 'KEEL_AUTH_CONFIG', useValue: config },
      { provide: Lockout, useFactory: (r: Redis) => new Lockout(r, config.KEEL_REDIS_PREFIX), inject: [Redis] },
      { provide: TenantLookup, useFactory: (rpc: RpcClient) => new TenantLookup(rpc), inject: [RpcClient] },
      {
        provide: Outbox,
        useFactory: (crossTenant: DataSource, m: Messaging, log: Logger) => new Outbox({ relayDs: crossTenant, messaging: m, schema: AUTH_SCHEMA, logger: log }),
        inject: [CROSS_TENANT_DS, MESSAGING, KEEL_LOGGER],
      },
      { provide: TokenKeys, useFactory: (ds: DataSource, outbox: Outbox) => new TokenKeys(ds, kekFrom(config.KEEL_KEK), outbox), inject: [DataSource, Outbox] },
      { provide: SubjectKeyStore, useFactory: (crossTenant: DataSource) => new SubjectKeyStore(crossTenant, kekFrom(config.KEEL_KEK)), inject: [CROSS_TENANT_DS] },
      PersonalDataService,
      SessionRevoker,
      SignInAlerts,
      RoleCatalog,
      RbacService,
      UsersService,
      SessionsService,
      MfaService,
      OidcClient,
      SsoStates,
      IdentityProvidersService,
      ExternalIdentities,
      { provide: SESSION_STARTER, useFactory: (sessions: SessionsService): SessionStarter => sessions, inject: [SessionsService] },
    ],
    // @MessagePattern handlers are served by KeelNatsTransport (Nest finds patterns on controllers).
    // Services that other providers inject stay providers (one instance) and are exposed by patternsOf.
    controllers: [
      // The failed sign-ins rule: an @EventPattern consumer of the user events (sign-in counts unknown emails with it).
      patternsOf(SignInAlerts),
      SsoService,
      ApiKeysService,
      patternsOf(RbacService),
      patternsOf(UsersService),
      patternsOf(SessionsService),
      patternsOf(MfaService),
      patternsOf(PersonalDataService),
      patternsOf(IdentityProvidersService),
    ],
    start: async (get) => {
      const m = get<Messaging>(MESSAGING);
      const keys = get<TokenKeys>(TokenKeys);
      // Another replica rotated the signing key: sign with the new one from now on.
      keyRotations = m.nc.subscribe(`${m.prefix}evt.platform.auth.signing_key.*`, { callback: () => keys.invalidate() });
      // The relay first: every write below waits for its events to reach the log.
      await get<Outbox>(Outbox).start();
      await keys.active();
      await createFirstAdmin(get<DataSource>(DataSource), get<UsersService>(UsersService), config, get<Logger>(KEEL_LOGGER));
    },
    // While NATS and the pools are still open: the relay publishes what it holds and hands over.
    beforeStop: (get) => get<Outbox>(Outbox).stop(),
    stop: async () => keyRotations?.unsubscribe(),
    checks: (get) => [outboxCheck(get<Outbox>(Outbox))],
  });
}
