export * from './projection';
export * from './projection-runner';
export * from './shadow';
export * from './projection-admin';
export * from './folded-rows';
