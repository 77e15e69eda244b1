/** The first answer to an idempotent request, thrown by the interceptor and sent by the filter. */
export class ReplayedResponse {
  constructor(
    readonly status: number,
    readonly body: unknown,
    readonly problem: boolean,
  ) {}
}
