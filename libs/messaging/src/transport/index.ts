export { Ctx, EventPattern, MessagePattern, Payload } from '@nestjs/microservices';
export * from './client';
export * from './controller';
export * from './filter';
export * from './lease';
export * from './server';
