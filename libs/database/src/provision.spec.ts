import { databaseName } from './provision';

describe('databaseName', () => {
  it.each([
    ['postgres://postgres@127.0.0.1:5432/keel_prod', 'keel_prod'],
    ['postgres://u:p@db.internal:6543/orders?sslmode=require', 'orders'],
    ['postgresql://u@h/my%20db', 'my db'],
    ['postgres://u@h/Keel-Test_1', 'Keel-Test_1'],
  ])('reads the database of %s', (url, name) => {
    expect(databaseName(url)).toBe(name);
  });

  it.each([['postgres://postgres@127.0.0.1:5432'], ['postgres://postgres@127.0.0.1:5432/'], ['postgres://h/?sslmode=disable']])(
    'falls back to "keel" when %s names none',
    (url) => {
      expect(databaseName(url)).toBe('keel');
    },
  );

  it('throws on something that is not a URL', () => {
    expect(() => databaseName('not a url')).toThrow();
  });
});
