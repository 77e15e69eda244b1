import { CanActivate, ExecutionContext, Injectable } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { FastifyReply } from 'fastify';
import { Admission } from './admission';
import { ENDPOINT, EndpointSpec } from './endpoint';
import { KeelRequest } from './request-context';

/**
 * The admission of every Nest route (see Admission): a guard rather than interceptors, so it runs
 * once, before the handler, without the per-interceptor async scopes Nest creates.
 */
@Injectable()
export class RequestGuard implements CanActivate {
  constructor(
    private readonly reflector: Reflector,
    private readonly admission: Admission,
  ) {}

  canActivate(context: ExecutionContext): boolean | Promise<boolean> {
    const http = context.switchToHttp();
    const spec = this.reflector.get<EndpointSpec | undefined>(ENDPOINT, context.getHandler());
    const admitted = this.admission.admit(spec, http.getRequest<KeelRequest>(), http.getResponse<FastifyReply>());
    return admitted ? admitted.then(() => true) : true;
  }
}
