// The baseline for gateway throughput: a bare Fastify hello-world, same Node, same machine.
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(join(fileURLToPath(import.meta.url), '..', '..', 'services', 'gateway', 'package.json'));
const fastify = require('fastify')();
fastify.get('/', async () => ({ hello: 'world' }));
await fastify.listen({ port: Number(process.argv[2]), host: '127.0.0.1' });
process.send?.('ready');
