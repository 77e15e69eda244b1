import { z } from 'zod';
import { queryInteger } from './validation';
import { actorSchema, envelopeSchema } from './envelope';
import { text } from './text';
import type { Permission } from './permissions';

/**
 * Contract-first (ARCHITECTURE.md §2): every HTTP route and every command and query subject is
 * declared once, here in `libs/contracts`. The gateway's guard and validator, its controllers'
 * typed calls, the service handlers' input parsing, the OpenAPI document and the AsyncAPI document
 * are all derived from these declarations, so none of them can drift from another.
 */

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/**
 * The permission a route needs; `public` for unauthenticated routes (health, docs, sign-in),
 * `authenticated` for what any signed-in caller may do for themselves.
 */
export type RoutePermission = Permission | 'public' | 'authenticated';

type Schema = z.ZodType;

export interface RouteResponse<R extends Schema | null = Schema | null> {
  /** Status of a successful answer. */
  status: number;
  /** The body's schema; `null` for an answer without a body (204, a redirect). */
  schema: R;
  /** `application/json` unless said otherwise (an HTML page, a CSV file, Prometheus text). */
  contentType?: string;
  description?: string;
}

export interface RouteSpec<
  P extends Schema | undefined = Schema | undefined,
  Q extends Schema | undefined = Schema | undefined,
  B extends Schema | undefined = Schema | undefined,
  R extends Schema | null = Schema | null,
> {
  method: HttpMethod;
  /** OpenAPI path template, e.g. `/api/v1/tenants/{id}`. */
  path: string;
  permission: RoutePermission;
  /** The path parameter naming the tenant the route acts in; only that tenant's callers (or platform administrators) pass. */
  tenantParam?: string;
  tag: string;
  summary: string;
  /** Path parameters (as text: the schema coerces what must be a number). */
  params?: P;
  /** Query string parameters (as text, like the path's). */
  query?: Q;
  /** The JSON body. A schema that accepts `undefined` makes the body optional. */
  body?: B;
  response: RouteResponse<R>;
  /** Honours `Idempotency-Key`. */
  idempotent?: boolean;
  /** Honours `If-Match: <version>`. */
  conditional?: boolean;
  /**
   * Needs a recent authentication: a signed-in user whose token's `auth_time` is within the tenant's
   * `stepUpWindowSeconds` (API keys never are; the operator token is exempt). Enforced by the gateway's guard.
   */
  stepUp?: boolean;
  /**
   * Answers about every tenant at once (the ledger's checkpoints and verification): for platform
   * principals only (the platform tenant's users and keys, the operator); a tenant's caller gets 403
   * whatever it holds. Enforced by the gateway's guard.
   */
  platformOnly?: boolean;
  /**
   * The command or query the route forwards to. A route with `forward` needs no gateway code: the
   * gateway serves it itself (guard, validation, `Idempotency-Key`, the call, the answer as it is).
   * A route without one is served by a gateway controller of its own (for what a plain forward
   * cannot do: caches, cookies, redirects, answers assembled from several calls).
   */
  forward?: RouteForward<{ body: Out<B>; query: Out<Q>; params: Out<P> }, R extends Schema ? z.output<R> : void>;
}

/** Who calls a forwarded route, and the metadata a command carries (as the gateway made them). */
export interface ForwardContext {
  meta: z.output<typeof commandMetaSchema>;
  /** What the caller holds (`*` for the operator): for commands of a service that checks grants itself. */
  permissions: '*' | string[];
  /** The caller's tenant (`platform` for platform users and the operator). */
  tenantId: string;
  /** May act in any tenant (platform administrators). */
  crossTenant: boolean;
}

export interface RouteForward<I = { body: unknown; query: unknown; params: unknown }, A = unknown> {
  rpc: RpcDecl;
  // (Method syntax: a route's own typed input stays assignable to `RouteDecl`'s.)
  /**
   * The request the subject is sent, from the validated input. Without it: a query is sent the path
   * and query parameters (`{ ...query, ...params }`: the path wins), a command `{ meta, payload: { ...params, data: body } }`
   * (`{ meta, payload: params }` for a route without a body).
   */
  request?(input: I, caller: ForwardContext): unknown;
  /** The command's `meta` also carries what the caller holds (`permissions`), for a service that checks grants itself. */
  withPermissions?: boolean;
  /** A `Location` header from the answer (a 201 naming what it made). */
  location?(answer: A): string;
  /** With `?format=csv`, the answer rendered as a CSV file (`text/csv`, an attachment named `filename`). */
  csv?(answer: A): { filename: string; text: string };
}

export interface RouteDecl<
  P extends Schema | undefined = Schema | undefined,
  Q extends Schema | undefined = Schema | undefined,
  B extends Schema | undefined = Schema | undefined,
  R extends Schema | null = Schema | null,
> extends RouteSpec<P, Q, B, R> {
  /** The key it is declared under in its group (the controller method serving it has the same name). */
  name: string;
  /** `<tag>.<name>`: stable, the OpenAPI operationId. */
  operationId: string;
}

type Out<S> = [NonNullable<S>] extends [never] ? undefined : NonNullable<S> extends Schema ? z.output<NonNullable<S>> : undefined;

/** What the gateway's validator hands a handler for a route: its body, query and path parameters, parsed. */
export interface RouteInput<D extends RouteSpec> {
  body: Out<D['body']>;
  query: Out<D['query']>;
  params: Out<D['params']>;
}

/** What a route answers (the output of its response schema). */
export type RouteOutput<D extends RouteSpec> = D['response']['schema'] extends Schema ? z.output<D['response']['schema']> : void;

/** Declares one route (typed: the schemas stay visible to `RouteInput` and `RouteOutput`). */
export function route<P extends Schema | undefined, Q extends Schema | undefined, B extends Schema | undefined, R extends Schema | null>(
  spec: RouteSpec<P, Q, B, R>,
): RouteSpec<P, Q, B, R> {
  return spec;
}

/** A group of routes: each gets its key as `name` and `<tag>.<name>` as its operationId. */
export function routeGroup<T extends Record<string, RouteSpec>>(group: T): { [K in keyof T]: T[K] & { name: K & string; operationId: string } } {
  return Object.fromEntries(
    Object.entries(group).map(([name, spec]) => [name, { ...spec, name, operationId: `${spec.tag}.${name}` }]),
  ) as never;
}

// ---- commands and queries over NATS request/reply ----

export interface RpcDecl<Req extends Schema = Schema, Res extends Schema = Schema> {
  kind: 'command' | 'query';
  service: string;
  name: string;
  /** Without the deployment prefix: `cmd.<service>.<name>` or `qry.<service>.<name>`. */
  subject: string;
  summary: string;
  /** What the handler parses its input with. */
  request: Req;
  /** What it answers (inside the `{ ok: true, value }` reply). */
  response: Res;
  /** A caller's default wait, when longer than the usual request timeout. */
  timeoutMs?: number;
}

export interface RpcSpec<Req extends Schema, Res extends Schema> {
  summary: string;
  request: Req;
  response: Res;
  timeoutMs?: number;
}

export function command<Req extends Schema, Res extends Schema>(service: string, name: string, spec: RpcSpec<Req, Res>): RpcDecl<Req, Res> & { kind: 'command' } {
  return { kind: 'command', service, name, subject: `cmd.${service}.${name}`, ...spec };
}

export function query<Req extends Schema, Res extends Schema>(service: string, name: string, spec: RpcSpec<Req, Res>): RpcDecl<Req, Res> & { kind: 'query' } {
  return { kind: 'query', service, name, subject: `qry.${service}.${name}`, ...spec };
}

/** What a caller sends (the request schema's input: defaults may be left out). */
export type RpcRequest<D extends RpcDecl> = z.input<D['request']>;
/** What the handler answers. */
export type RpcResponse<D extends RpcDecl> = z.output<D['response']>;

// ---- shared pieces of requests and responses ----

/** What every command carries besides its payload (see `CommandMeta`). */
export const commandMetaSchema = z
  .object({
    actor: actorSchema,
    correlationId: envelopeSchema.shape.correlationId,
    /** When set, the command applies only if the aggregate is at this version (else 412). */
    expectedVersion: z.number().int().min(0).optional(),
    /** The command's own id (from an `Idempotency-Key`). */
    commandId: envelopeSchema.shape.commandId,
  })
  .strict();

/** A command: `{ meta, payload }`. */
export const commandRequest = <P extends Schema>(payload: P) => z.object({ meta: commandMetaSchema, payload }).strict();

/** An ISO-8601 UTC time, as answers carry them. */
export const isoTime = z.iso.datetime();
/** The stream position of the event a command appended: pass it as `consistentWith`. */
export const positionSchema = z.number().int().min(0).describe('Stream position of the event; pass it as consistentWith');
/** A cursor page of `item`. */
export const pageOf = <T extends Schema>(item: T) => z.object({ items: z.array(item), nextCursor: text().nullable() });
/** A list (no paging) of `item`. */
export const listOf = <T extends Schema>(item: T) => z.object({ items: z.array(item) });
/** `?consistentWith=` on a query string. */
export const consistentWithParam = queryInteger().optional().describe('Answer once the read model has applied this position');
/** A request without anything in it. */
export const emptyRequest = z.object({}).strict();
/** Any JSON object (a document served as it is). */
export const jsonObject = z.record(text(), z.unknown());

/** `true` when A and B are the same type (for compile-time checks that an interface and its schema agree). */
export type SameType<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;

// ---- a service's whole contract ----

/**
 * Everything one backend service declares: its route groups (each group served by the gateway,
 * forwarded or by a controller), its command and query subjects, its event types' bodies, and
 * whether it serves the operator subjects for read models (`projections`: `dead-letters` for a
 * service with projections, `ledger` for the audit ledger, which has incidents instead).
 *
 * Each backend's contract file (`libs/contracts/src/<service>.ts`) exports it as `<service>Contract`
 * (camel-cased: `gpuSchedulerContract`);
 * `node infra/generate.mjs` lists them from services.manifest.json in `services.generated.ts`,
 * from which `routes`, `rpcs`, `eventSchemas`, the OpenAPI and AsyncAPI documents and the
 * gateway's forwarded routes are all derived, so a new service registers nowhere else.
 */
export interface ServiceContract {
  service: string;
  routes: Record<string, Record<string, RouteDecl>>;
  rpcs: Record<string, RpcDecl>;
  events: Record<string, z.ZodType>;
  projections?: 'dead-letters' | 'ledger';
}

/** Declares a service's contract (typed: every route, subject and schema stays visible). */
export function serviceContract<const C extends ServiceContract>(contract: C): C {
  for (const decl of Object.values(contract.rpcs)) {
    if (decl.service !== contract.service) throw new Error(`${decl.subject} is declared in the ${contract.service} contract but names the ${decl.service} service.`);
  }
  return contract;
}
