export * from './provision';
export * from './data-source';
export * from './leadership';
export * from './tenant-scope';
export * from './readiness';
export * from './pooled-client';
