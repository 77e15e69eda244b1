import { isDependencyOutage, isPostgresOutageState, outageReason } from './outage';

const withProps = (message: string, props: Record<string, unknown>) => Object.assign(new Error(message), props);

describe('isDependencyOutage', () => {
  it.each([
    ['a refused connection', withProps('connect ECONNREFUSED 127.0.0.1:5432', { code: 'ECONNREFUSED' })],
    ['a reset connection', withProps('read ECONNRESET', { code: 'ECONNRESET' })],
    ['Postgres shutting down (57P01)', withProps('terminating connection due to administrator command', { code: '57P01' })],
    ['Postgres crash shutdown (57P02)', withProps('terminating connection because of crash of another server process', { code: '57P02' })],
    ['Postgres starting up (57P03)', withProps('the database system is starting up', { code: '57P03' })],
    ['a connection exception (class 08)', withProps('connection failure', { code: '08006' })],
    ['too many connections (53300)', withProps('sorry, too many clients already', { code: '53300' })],
    ['a statement cancelled by statement_timeout (57014)', withProps('canceling statement due to statement timeout', { code: '57014' })],
    ['pg: connection lost', new Error('Connection terminated unexpectedly')],
    ['pg-pool: connect timeout', new Error('timeout exceeded when trying to connect')],
    ['pg-pool: ended pool', new Error('Cannot use a pool after calling end on the pool')],
    ['ioredis: not connected, no offline queue', new Error("Stream isn't writeable and enableOfflineQueue options is false")],
    ['ioredis: connection closed', new Error('Connection is closed.')],
    ['ioredis: retries exhausted', withProps('Reached the max retries per request limit (which is 1). Refer to "maxRetriesPerRequest" option for details.', { name: 'MaxRetriesPerRequestError' })],
    ['Redis loading its dataset', withProps('LOADING Redis is loading the dataset in memory', { name: 'ReplyError' })],
    ['NATS connection closed', withProps('CONNECTION_CLOSED', { name: 'NatsError', code: 'CONNECTION_CLOSED' })],
    ['TypeORM QueryFailedError around a shutdown', withProps('terminating connection due to administrator command', { name: 'QueryFailedError', driverError: withProps('x', { code: '57P01' }) })],
    ['TypeORM: the runner of a lost connection', withProps('Query runner already released. Cannot run queries anymore.', { name: 'QueryRunnerAlreadyReleasedError' })],
    ['TypeORM: the connection of a transaction lost', withProps('Database connection provided by a query runner was already released', { name: 'QueryRunnerProviderAlreadyReleasedError' })],
    ['an error caused by a refused connection', new Error('lookup failed', { cause: withProps('connect ECONNREFUSED', { code: 'ECONNREFUSED' }) })],
    ['an AggregateError of refused addresses', Object.assign(new AggregateError([withProps('connect ECONNREFUSED ::1:5432', { code: 'ECONNREFUSED' })], ''), {})],
  ])('is true for %s', (_what, error) => {
    expect(isDependencyOutage(error)).toBe(true);
    expect(outageReason(error)).toEqual(expect.any(String));
  });

  it.each([
    ['a unique violation', withProps('duplicate key value violates unique constraint', { code: '23505' })],
    ['a syntax error', withProps('syntax error at or near "SELEC"', { code: '42601' })],
    ['an undefined column', withProps('column "x" does not exist', { code: '42703' })],
    ['a TypeError', new TypeError("Cannot read properties of undefined (reading 'id')")],
    ['a Redis WRONGTYPE reply', withProps('WRONGTYPE Operation against a key holding the wrong kind of value', { name: 'ReplyError' })],
    ['a NATS bad subject', withProps('BAD_SUBJECT', { name: 'NatsError', code: 'BAD_SUBJECT' })],
    ['a non-error', 'Connection terminated'],
    ['null', null],
    ['an error whose message only mentions a connection', new Error('user said: Connection terminated unexpectedly')],
  ])('is false for %s', (_what, error) => {
    expect(isDependencyOutage(error)).toBe(false);
  });

  it('does not loop on a cyclic cause', () => {
    const a = new Error('a') as Error & { cause?: unknown };
    a.cause = a;
    expect(isDependencyOutage(a)).toBe(false);
  });
});

describe('isPostgresOutageState', () => {
  it('takes class 08 and the shutdown states, not the rest of class 57 or other classes', () => {
    for (const code of ['08000', '08003', '08006', '08001', '08004', '57P01', '57P02', '57P03', '53100', '53300']) expect(isPostgresOutageState(code)).toBe(true);
    for (const code of ['57000', '23505', '40001', '22P02', 'ECONN', '0800']) expect(isPostgresOutageState(code)).toBe(false);
  });
});
