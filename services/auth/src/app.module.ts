import { BeforeApplicationShutdown, Inject, Injectable, Module, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { DataSource } from 'typeorm';
import Redis from 'ioredis';
import { Subscription } from 'nats';
import { KeelConfig, serviceDatabaseUrl } from '@keel/config';
import { kekFrom } from '@keel/crypto';
import { ALL_TENANTS, openDataSource, tenantQuery } from '@keel/database';
import { Outbox } from '@keel/event-sourcing';
import { KEEL_LOGGER, MESSAGING, Messaging, MessagingModule, patternsOf, RpcClient } from '@keel/messaging';
import { Logger } from '@keel/observability';
import { ProjectionRunner } from '@keel/projections';
import { ApiKeysService } from './api-keys/api-keys.service';
import { AUTH_ROLE, AUTH_SCHEMA, CROSS_TENANT_DS } from './database/schema';
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
import { Lockout } from './users/lockout';
import { TenantLookup } from './users/tenant-lookup';
import { UsersProjection } from './users/users.projection';
import { UsersService } from './users/users.service';

@Injectable()
class AuthLifecycle implements OnApplicationBootstrap, BeforeApplicationShutdown, OnApplicationShutdown {
  private sub?: Subscription;

  constructor(
    private readonly outbox: Outbox,
    private readonly runner: ProjectionRunner,
    private readonly keys: TokenKeys,
    private readonly users: UsersService,
    @Inject(DataSource) private readonly ds: DataSource,
    @Inject(CROSS_TENANT_DS) private readonly crossTenant: DataSource,
    private readonly redis: Redis,
    @Inject(MESSAGING) private readonly m: Messaging,
    @Inject('KEEL_AUTH_CONFIG') private readonly config: KeelConfig,
    @Inject(KEEL_LOGGER) private readonly logger: Logger,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    // Another replica rotated the signing key: sign with the new one from now on.
    this.sub = this.m.nc.subscribe(`${this.m.prefix}evt.platform.auth.signing_key.*`, { callback: () => this.keys.invalidate() });
    // The relay first: every write below waits for its events to reach the log.
    await this.outbox.start();
    await this.keys.active();
    await this.runner.start();
    await this.firstAdmin();
  }

  /** The first platform administrator, from KEEL_ADMIN_EMAIL / KEEL_ADMIN_PASSWORD, when there is none. */
  private async firstAdmin(): Promise<void> {
    const { KEEL_ADMIN_EMAIL: email, KEEL_ADMIN_PASSWORD: password } = this.config;
    if (!email || !password) return;
    const [{ n }] = await tenantQuery(this.ds, 'platform', `SELECT count(*)::int AS n FROM "${AUTH_SCHEMA}".email_reservations WHERE tenant_id = 'platform'`);
    if (n > 0) return;
    try {
      await this.users.createUser('platform', { email: email.toLowerCase(), name: 'Platform administrator', roles: ['platform_admin'], password }, {
        actor: { kind: 'system', id: 'first-start' },
        correlationId: 'first-start',
      });
      this.logger.info({ email }, 'first platform administrator created');
    } catch (error) {
      this.logger.warn({ err: error }, 'first platform administrator not created (another replica may have made it)');
    }
  }

  /** While NATS and the pools are still open: the relay publishes what it holds and hands over. */
  async beforeApplicationShutdown(): Promise<void> {
    await this.outbox.stop();
  }

  async onApplicationShutdown(): Promise<void> {
    this.sub?.unsubscribe();
    await this.runner.stop();
    await this.ds.destroy();
    await this.crossTenant.destroy();
    this.redis.disconnect();
  }
}

export function authModule(config: KeelConfig, logger: Logger) {
  @Module({
    imports: [MessagingModule.forRoot({ config, logger, service: 'auth' })],
    providers: [
      { provide: 'KEEL_AUTH_CONFIG', useValue: config },
      {
        provide: DataSource,
        useFactory: () => openDataSource({ url: serviceDatabaseUrl(config, AUTH_ROLE), schema: AUTH_SCHEMA, applicationName: 'keel-auth' }),
      },
      {
        provide: CROSS_TENANT_DS,
        useFactory: () =>
          // Refreshes, and the outbox relay (its leadership lock, LISTEN and the batches of every tenant).
          openDataSource({ url: serviceDatabaseUrl(config, AUTH_ROLE), schema: AUTH_SCHEMA, applicationName: 'keel-auth-cross-tenant', poolSize: 8, scope: ALL_TENANTS }),
      },
      { provide: Redis, useFactory: () => new Redis(config.REDIS_URL, { maxRetriesPerRequest: 1, enableOfflineQueue: false, enableAutoPipelining: true }) },
      { provide: Lockout, useFactory: (r: Redis) => new Lockout(r, config.KEEL_REDIS_PREFIX), inject: [Redis] },
      { provide: TenantLookup, useFactory: (rpc: RpcClient) => new TenantLookup(rpc), inject: [RpcClient] },
      {
        provide: Outbox,
        useFactory: (crossTenant: DataSource, m: Messaging, log: Logger) => new Outbox({ relayDs: crossTenant, messaging: m, schema: AUTH_SCHEMA, logger: log }),
        inject: [CROSS_TENANT_DS, MESSAGING, KEEL_LOGGER],
      },
      { provide: TokenKeys, useFactory: (ds: DataSource, outbox: Outbox) => new TokenKeys(ds, kekFrom(config.KEEL_KEK), outbox), inject: [DataSource, Outbox] },
      {
        provide: ProjectionRunner,
        useFactory: (ds: DataSource, m: Messaging, rpc: RpcClient, log: Logger) =>
          new ProjectionRunner({ ds, messaging: m, rpc, logger: log, schema: AUTH_SCHEMA, projection: new UsersProjection() }),
        inject: [DataSource, MESSAGING, RpcClient, KEEL_LOGGER],
      },
      SessionRevoker,
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
      AuthLifecycle,
    ],
    // @MessagePattern handlers are served by KeelNatsTransport (Nest finds patterns on controllers).
    // Services that other providers inject stay providers (one instance) and are exposed by patternsOf.
    controllers: [
      SsoService,
      ApiKeysService,
      patternsOf(RbacService),
      patternsOf(UsersService),
      patternsOf(SessionsService),
      patternsOf(MfaService),
      patternsOf(IdentityProvidersService),
    ],
  })
  class AuthModule {}
  return AuthModule;
}
