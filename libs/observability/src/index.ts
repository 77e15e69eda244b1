export * from './telemetry';
export * from './logger';
export * from './metrics';
export * from './trace-context';
export * from './ops-server';
export * from './http-tracing';
