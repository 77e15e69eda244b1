import { connect } from 'nats';
import { cleanupEnv, isolatedEnv } from '@keel/testing';

/** What a test leaves on the shared NATS server is removed with its environment. */
describe('cleanupEnv', () => {
  it("removes the test's stream and the KV buckets the transport keeps beside it, and nothing of another test", async () => {
    const mine = isolatedEnv('cleanup');
    const other = isolatedEnv('cleanup-other');
    const nc = await connect({ servers: process.env.NATS_URL ?? 'nats://127.0.0.1:4222' });
    try {
      const jsm = await nc.jetstreamManager();
      const js = nc.jetstream();
      for (const env of [mine, other]) {
        await jsm.streams.add({ name: env.KEEL_STREAM, subjects: [`${env.KEEL_SUBJECT_PREFIX}evt.>`] });
        // The transport's buckets: positions and dead letters, and the consumer leases.
        await js.views.kv(`${env.KEEL_STREAM}_events`);
        await js.views.kv(`${env.KEEL_STREAM}_leases`);
      }
      const names = async () => {
        const all: string[] = [];
        for await (const name of jsm.streams.names()) all.push(name);
        return all;
      };
      const of = (env: typeof mine) => [env.KEEL_STREAM, `KV_${env.KEEL_STREAM}_events`, `KV_${env.KEEL_STREAM}_leases`];
      expect(await names()).toEqual(expect.arrayContaining([...of(mine), ...of(other)]));

      await cleanupEnv(mine);

      const left = await names();
      for (const name of of(mine)) expect(left).not.toContain(name);
      expect(left).toEqual(expect.arrayContaining(of(other)));
    } finally {
      await nc.close();
      await cleanupEnv(other);
    }
  });
});
