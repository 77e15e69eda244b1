/** Outbound HTTP to addresses a tenant chose (identity providers, webhook endpoints), safe against SSRF. */
export * from './safe-fetch';
