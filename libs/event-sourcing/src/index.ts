export * from './decider';
export * from './command-handler';
export * from './outbox';
export * from './decider-spec';
