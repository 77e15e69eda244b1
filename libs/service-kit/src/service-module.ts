import {
  BeforeApplicationShutdown,
  DynamicModule,
  ForwardReference,
  Inject,
  Injectable,
  InjectionToken,
  Module,
  OnApplicationBootstrap,
  OnApplicationShutdown,
  Provider,
  Type,
} from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import Redis from 'ioredis';
import { DataSource } from 'typeorm';
import { KeelConfig, serviceDatabaseUrl } from '@keel/config';
import { openDataSource, postgresCheck } from '@keel/database';
import { KEEL_LOGGER, listenForErasures, MESSAGING, Messaging, MessagingModule, PersonalData, remoteSubjectKeys, RpcClient, SubjectKeySource } from '@keel/messaging';
import { Logger, ReadinessCheck, withTimeout } from '@keel/observability';
import { Projection, projectionCheck, ProjectionRunner } from '@keel/projections';
import { manifestService } from './manifest';
import { orderedShutdown, SHUTDOWN_TIMEOUTS } from './shutdown';

/** Finds a provider of the service's module while it runs (start, stop and readiness hooks). */
export type Resolve = <T = unknown>(token: InjectionToken) => T;

/** A Nest factory: what `useFactory` gets is what `inject` names, in order. */
export interface Factory<T> {
  useFactory: (...deps: any[]) => T;
  inject?: InjectionToken[];
}

/** A pool besides the service's main one (`DataSource`), on the same role and schema. */
export interface ExtraDataSource {
  provide: InjectionToken;
  /** What the connections are called in pg_stat_activity: `keel-<service>-<label>`. */
  label: string;
  poolSize?: number;
  /** A tenant scope for every statement (see openDataSource), e.g. ALL_TENANTS. */
  scope?: string;
}

export interface ProjectionSpec {
  /** The projection; a factory, so it can be given the service's providers (a cache, say). */
  projection: Factory<Projection>;
  /** Its runner's token; `ProjectionRunner` itself when omitted (a service with one projection). */
  provide?: InjectionToken;
}

export interface ServiceModuleOptions {
  /** Its name in services.manifest.json. */
  name: string;
  config: KeelConfig;
  logger: Logger;
  /** Its Postgres schema; the name (dashes as underscores) when omitted. */
  schema?: string;
  /** Pools besides the main one, which a service with a database always has. */
  dataSources?: ExtraDataSource[];
  /** A Redis client (the `Redis` class is its token), failing fast while Redis is away. */
  redis?: boolean;
  projections?: ProjectionSpec[];
  imports?: (Type<unknown> | DynamicModule | Promise<DynamicModule> | ForwardReference)[];
  providers?: Provider[];
  /**
   * Where the service's data keys for personal data come from: the owner's own store (the auth
   * service). Every other service asks the owner over NATS and unwraps with its KEEL_KEK.
   */
  subjectKeys?: Factory<SubjectKeySource>;
  /** Classes with `@MessagePattern`/`@EventPattern` handlers, served by the transport. */
  controllers?: Type<unknown>[];
  /** Work of the service's own after the projections have started (e.g. a writer, a first user). */
  start?: (get: Resolve) => Promise<void>;
  /** Work while NATS and the pools are still open, before anything closes (e.g. an outbox handing over). */
  beforeStop?: (get: Resolve) => Promise<void>;
  /** The service's own stop work, before its projections stop and its pools close. */
  stop?: (get: Resolve) => Promise<void>;
  /** Readiness checks beyond NATS, Postgres, Redis and the projections. */
  checks?: (get: Resolve) => ReadinessCheck[];
}

/** The readiness checks of a service module: run by the kit's ops server. */
export const SERVICE_READINESS = Symbol('SERVICE_READINESS');
const SERVICE_OPTIONS = Symbol('SERVICE_OPTIONS');
const PROJECTION_RUNNERS = Symbol('PROJECTION_RUNNERS');
/** How long the Redis readiness ping may take: tighter than the ops server's bound, as postgresCheck is. */
const REDIS_CHECK_TIMEOUT_MS = 2_000;

/**
 * The kit's Redis client. It fails fast while Redis is away (callers answer 503 or fall back,
 * rather than queue): one retry, no offline queue, and a command a silent Redis (stopped, or
 * behind a dead link) never answers is rejected after `commandTimeout`. No Keel code runs a
 * blocking or long Redis command (no BLPOP, XREAD BLOCK, SUBSCRIBE, WAIT): every command is a
 * GET/SET, a counter or a short script, well under that bound.
 */
export const REDIS_CLIENT_OPTIONS = { maxRetriesPerRequest: 1, enableOfflineQueue: false, enableAutoPipelining: true, commandTimeout: 1_000 } as const;

interface Resolved {
  o: ServiceModuleOptions;
  database: boolean;
  pools: { label: string; token: InjectionToken }[];
}

/**
 * Starts and stops what the standard module owns, in order: on start the projection runners,
 * then the service's own start work; on stop the service's own stop work, the runners (last
 * first), the pools and Redis, each step bounded so one that hangs does not hold the rest.
 */
@Injectable()
class ServiceLifecycle implements OnApplicationBootstrap, BeforeApplicationShutdown, OnApplicationShutdown {
  private readonly get: Resolve;

  constructor(
    @Inject(SERVICE_OPTIONS) private readonly r: Resolved,
    @Inject(PROJECTION_RUNNERS) private readonly runners: ProjectionRunner[],
    @Inject(KEEL_LOGGER) private readonly logger: Logger,
    moduleRef: ModuleRef,
  ) {
    this.get = <T>(token: InjectionToken) => moduleRef.get<T>(token as never, { strict: false });
  }

  async onApplicationBootstrap(): Promise<void> {
    for (const runner of this.runners) await runner.start();
    await this.r.o.start?.(this.get);
  }

  async beforeApplicationShutdown(): Promise<void> {
    const { beforeStop } = this.r.o;
    if (beforeStop) await orderedShutdown([{ name: 'before stop', timeoutMs: SHUTDOWN_TIMEOUTS.resource, run: () => beforeStop(this.get) }], this.logger);
  }

  async onApplicationShutdown(): Promise<void> {
    const { stop, redis } = this.r.o;
    const step = (name: string, run: () => Promise<unknown>) => ({ name, timeoutMs: SHUTDOWN_TIMEOUTS.resource, run });
    await orderedShutdown(
      [
        ...(stop ? [step(`${this.r.o.name} stop`, () => stop(this.get))] : []),
        ...[...this.runners].reverse().map((runner) => step(`projection ${runner.name}`, () => runner.stop())),
        ...this.r.pools.map((pool) => step(`pool ${pool.label}`, () => this.get<DataSource>(pool.token).destroy())),
        ...(redis ? [step('redis', async () => this.get<Redis>(Redis).disconnect())] : []),
      ],
      this.logger,
    );
  }
}

function readinessChecks(r: Resolved, get: Resolve, runners: ProjectionRunner[]): ReadinessCheck[] {
  const checks: ReadinessCheck[] = [];
  if (r.database) checks.push(postgresCheck(get<DataSource>(DataSource)));
  if (r.o.redis) {
    const redis = get<Redis>(Redis);
    checks.push({ name: 'redis', check: async () => (await withTimeout(redis.ping(), REDIS_CHECK_TIMEOUT_MS, 'Redis PING')) === 'PONG' });
  }
  for (const runner of runners) {
    const check = projectionCheck(runner);
    checks.push(runners.length === 1 ? check : { ...check, name: `projection ${runner.name}` });
  }
  return [...checks, ...(r.o.checks?.(get) ?? [])];
}

/**
 * The module of a Keel service: MessagingModule (NATS, the event store, RPC clients), its main
 * pool (`DataSource`, on its own role's URL and schema) and any further pools, Redis, its
 * projection runners, and its own providers and handlers; the runners start and stop with the
 * application, the pools and Redis close after them, and SERVICE_READINESS has a bounded check
 * for each of them.
 */
export function serviceModule(o: ServiceModuleOptions): Type<unknown> {
  const entry = manifestService(o.name);
  const schema = o.schema ?? o.name.replace(/-/g, '_');
  const { config } = o;
  const extraPools = entry.database ? (o.dataSources ?? []) : [];
  if (!entry.database && o.dataSources?.length) throw new Error(`${o.name} has no database in services.manifest.json, so it cannot have pools.`);
  const projections = o.projections ?? [];
  if (projections.length && !entry.database) throw new Error(`${o.name} has projections but no database in services.manifest.json; set "database": true on its line.`);
  const runnerTokens = projections.map((p) => p.provide ?? ProjectionRunner);
  if (new Set(runnerTokens).size !== runnerTokens.length) throw new Error(`${o.name}: two projections share a runner token; give each a \`provide\` of its own.`);
  const resolved: Resolved = {
    o,
    database: entry.database,
    pools: entry.database ? [{ label: 'main', token: DataSource }, ...extraPools.map((p) => ({ label: p.label, token: p.provide }))] : [],
  };
  const url = () => serviceDatabaseUrl(config, entry.role!);
  const providers: Provider[] = [
    { provide: SERVICE_OPTIONS, useValue: resolved },
    ...(entry.database ? [{ provide: DataSource, useFactory: () => openDataSource({ url: url(), schema, applicationName: `keel-${o.name}` }) }] : []),
    ...extraPools.map((p) => ({
      provide: p.provide,
      useFactory: () => openDataSource({ url: url(), schema, applicationName: `keel-${o.name}-${p.label}`, poolSize: p.poolSize, scope: p.scope }),
    })),
    ...(o.redis ? [{ provide: Redis, useFactory: () => new Redis(config.REDIS_URL, { ...REDIS_CLIENT_OPTIONS }) }] : []),
    ...projections.map((p, i) => ({
      provide: runnerTokens[i]!,
      useFactory: (ds: DataSource, m: Messaging, rpc: RpcClient, log: Logger, ...deps: unknown[]) =>
        new ProjectionRunner({ ds, messaging: m, rpc, logger: log, schema, service: o.name, projection: p.projection.useFactory(...deps) }),
      inject: [DataSource, MESSAGING, RpcClient, KEEL_LOGGER, ...(p.projection.inject ?? [])],
    })),
    {
      // Seals what this process publishes and opens what its readers read (see PersonalData); set on
      // the connection when the module starts, before anything is published. A process with neither
      // a key store of its own nor KEEL_KEK (the gateway) has none: it refuses to publish personal data.
      provide: PersonalData,
      useFactory: (m: Messaging, rpc: RpcClient, ...deps: unknown[]): PersonalData | null => {
        const source = o.subjectKeys ? o.subjectKeys.useFactory(...deps) : config.KEEL_KEK ? remoteSubjectKeys(rpc, config.KEEL_KEK) : null;
        if (!source) return null;
        const pd = new PersonalData(source);
        m.personalData = pd;
        listenForErasures(m, pd);
        return pd;
      },
      inject: [MESSAGING, RpcClient, ...(o.subjectKeys?.inject ?? [])],
    },
    { provide: PROJECTION_RUNNERS, useFactory: (...runners: ProjectionRunner[]) => runners, inject: runnerTokens },
    {
      provide: SERVICE_READINESS,
      useFactory: (moduleRef: ModuleRef, runners: ProjectionRunner[]) => (): ReadinessCheck[] =>
        readinessChecks(resolved, (token) => moduleRef.get(token as never, { strict: false }), runners),
      inject: [ModuleRef, PROJECTION_RUNNERS],
    },
    ...(o.providers ?? []),
    ServiceLifecycle,
  ];

  @Module({
    imports: [MessagingModule.forRoot({ config, logger: o.logger, service: o.name }), ...(o.imports ?? [])],
    providers,
    controllers: o.controllers ?? [],
  })
  class ServiceModule {}
  return ServiceModule;
}
