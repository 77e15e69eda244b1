import { Controller, Inject, Type } from '@nestjs/common';
import { PATTERN_METADATA } from '@nestjs/microservices/constants';

const CLASS_ENHANCERS = ['__guards__', '__interceptors__', '__exceptionFilters__', '__pipes__'];

/**
 * A controller that serves the `@MessagePattern`/`@EventPattern` methods of a provider by calling
 * that provider's single instance. Nest's microservice router finds patterns on controllers only;
 * a class that other providers inject stays a provider (one instance, one aggregate cache), and
 * `controllers: [patternsOf(UsersService)]` exposes its handlers. A class nothing injects can be
 * listed in `controllers` directly instead.
 */
export function patternsOf<T extends object>(provider: Type<T>): Type<unknown> {
  @Controller()
  class Patterns {
    constructor(@Inject(provider) readonly target: T) {}
  }
  Object.defineProperty(Patterns, 'name', { value: `${provider.name}Patterns` });
  for (const key of CLASS_ENHANCERS) {
    const value = Reflect.getMetadata(key, provider);
    if (value !== undefined) Reflect.defineMetadata(key, value, Patterns);
  }
  const seen = new Set<string>();
  for (let proto = provider.prototype; proto && proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
    for (const key of Object.getOwnPropertyNames(proto)) {
      if (key === 'constructor' || seen.has(key)) continue;
      seen.add(key);
      const fn = Object.getOwnPropertyDescriptor(proto, key)?.value;
      if (typeof fn !== 'function' || !Reflect.hasMetadata(PATTERN_METADATA, fn)) continue;
      const delegate = function (this: Patterns, ...args: unknown[]) {
        return (this.target as Record<string, (...a: unknown[]) => unknown>)[key]!(...args);
      };
      Object.defineProperty(delegate, 'name', { value: key });
      for (const k of Reflect.getMetadataKeys(fn)) Reflect.defineMetadata(k, Reflect.getMetadata(k, fn), delegate);
      for (const k of Reflect.getOwnMetadataKeys(proto, key)) Reflect.defineMetadata(k, Reflect.getOwnMetadata(k, proto, key), Patterns.prototype, key);
      // Parameter decorators (@Payload(), @Ctx()) are recorded on the class, per method.
      for (const k of Reflect.getMetadataKeys(provider, key)) Reflect.defineMetadata(k, Reflect.getMetadata(k, provider, key), Patterns, key);
      Object.defineProperty(Patterns.prototype, key, { value: delegate, writable: true, configurable: true });
    }
  }
  return Patterns;
}
