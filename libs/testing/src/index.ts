export * from './environment';
export * from './stack';
export * from './http';
export * from './eventually';
export * from './redis';
