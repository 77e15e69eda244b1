/**
 * The service kit. A service's main.ts imports it before telemetry starts, so what it loads at
 * once is light (the manifest, bootstrap, shutdown); the standard module, which needs Nest,
 * TypeORM and Redis, is loaded when serviceModule is first called, from the app module.
 */
export * from './manifest';
export * from './bootstrap';
export * from './shutdown';
export type { Migrations } from './provision';
export type { ExtraDataSource, Factory, ProjectionSpec, Resolve, ServiceModuleOptions } from './service-module';

export const serviceModule: typeof import('./service-module').serviceModule = (o) =>
  (require('./service-module') as typeof import('./service-module')).serviceModule(o);
