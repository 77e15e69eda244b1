export * from './codec';
export * from './connection';
export * from './stream';
export * from './event-store';
export * from './rpc';
export * from './consumer';
export * from './nest';
export * from './backend';
