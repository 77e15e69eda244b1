import { SetMetadata, createParamDecorator, ExecutionContext } from '@nestjs/common';
import { z } from 'zod';
import { Permission } from '@keel/contracts';

export const ENDPOINT = 'keel:endpoint';

export interface EndpointSpec {
  /**
   * The permission the caller needs; `public` for unauthenticated routes (health, docs,
   * sign-in), `authenticated` for what any signed-in caller may do for themselves.
   */
  permission: Permission | 'public' | 'authenticated';
  /** The path parameter naming the tenant the route acts in; only that tenant's callers (or platform admins) pass. */
  tenantParam?: string;
  summary: string;
  tag: string;
  body?: z.ZodType;
  query?: z.ZodType;
  params?: z.ZodType;
  /** Status of a successful answer (documented in OpenAPI). */
  status?: number;
  /** Honours `Idempotency-Key`. */
  idempotent?: boolean;
  /** Honours `If-Match: <version>`. */
  conditional?: boolean;
  /** Describes the success response for OpenAPI. */
  response?: string;
}

/** Declares what a route needs and accepts; the guard and the validator read it. */
export const Endpoint = (spec: EndpointSpec) => SetMetadata(ENDPOINT, spec);

export interface ValidInput<B = unknown, Q = unknown, P = unknown> {
  body: B;
  query: Q;
  params: P;
}

/** The request's body, query and path parameters, as validated against the endpoint's schemas. */
export const Input = createParamDecorator((_: unknown, ctx: ExecutionContext) => ctx.switchToHttp().getRequest().valid);
