/**
 * Three projects: unit tests beside the code (src/**\/*.spec.ts), integration tests per
 * service and lib against the real NATS, Postgres and Redis (test/**\/*.spec.ts), and
 * end-to-end tests through the gateway with the real processes (top-level test/).
 * Type-checking is `npm run build` (tsc -b), not jest: @swc/jest only strips types.
 */
const swc = [
  '@swc/jest',
  {
    jsc: {
      parser: { syntax: 'typescript', decorators: true },
      transform: { legacyDecorator: true, decoratorMetadata: true },
      target: 'es2022',
    },
    module: { type: 'commonjs' },
  },
];

const common = {
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': swc },
  // `@keel/<lib>` is a lib's index; `@keel/<lib>/<module>` one of its modules kept out of the index.
  moduleNameMapper: { '^@keel/([^/]+)/(.+)$': '<rootDir>/libs/$1/src/$2', '^@keel/([^/]+)$': '<rootDir>/libs/$1/src' },
  moduleFileExtensions: ['ts', 'js', 'json'],
};

module.exports = {
  testTimeout: 300000,
  projects: [
    {
      ...common,
      displayName: 'unit',
      testMatch: ['<rootDir>/libs/*/src/**/*.spec.ts', '<rootDir>/services/*/src/**/*.spec.ts'],
    },
    {
      ...common,
      displayName: 'integration',
      testMatch: ['<rootDir>/libs/*/test/**/*.spec.ts', '<rootDir>/services/*/test/**/*.spec.ts'],
      globalSetup: '<rootDir>/libs/testing/src/global-setup.ts',
      globalTeardown: '<rootDir>/libs/testing/src/global-teardown.ts',
    },
    {
      ...common,
      displayName: 'e2e',
      testMatch: ['<rootDir>/test/**/*.spec.ts'],
      globalSetup: '<rootDir>/libs/testing/src/global-setup.ts',
      globalTeardown: '<rootDir>/libs/testing/src/global-teardown.ts',
    },
  ],
};
