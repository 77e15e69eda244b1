import { ArgumentsHost, Catch, RpcExceptionFilter } from '@nestjs/common';
import { Observable, throwError } from 'rxjs';

/**
 * Hands a `@MessagePattern`/`@EventPattern` handler's error to the transport as it was thrown.
 * Nest's default RPC filter would turn anything but an RpcException into "Internal server error";
 * KeelNatsTransport answers a KeelError as such and maps outages (see `toErrorBody`), and an
 * event consumer tells a PermanentEventError from a transient failure. Register it as a global
 * filter of the microservice before it listens (runBackend does).
 */
@Catch()
export class KeelRpcExceptionFilter implements RpcExceptionFilter<unknown> {
  catch(exception: unknown, _host: ArgumentsHost): Observable<never> {
    return throwError(() => exception);
  }
}
