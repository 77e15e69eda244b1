import { invoiceEventTypes as I } from '@keel/contracts';
import { bookDecider, BookState } from './invoice.handlers';

const TENANT = '01a24d36-ba64-7537-9b49-d6e17d36249b';
const book = bookDecider(TENANT);
const at = '2026-12-01T00:00:00.000Z';
const apply = (s: BookState, events: { type: string; data: Record<string, unknown> }[]) => events.reduce((st, e) => book.evolve(st, { ...e, occurredAt: at } as never), s);
const draft = (period: string, previous: string, periodStart: string, periodEnd: string) =>
  ({ type: 'draft', period, previous, periodStart, periodEnd, timeZone: 'Europe/Berlin', plan: 'professional', finalizesAt: periodEnd }) as const;
const computed = { currency: 'USD', plan: 'professional', planPrice: null, lines: [], total: '10.00' };

describe('the invoice book', () => {
  it('begins a month where the previous invoice ended, whatever the time zone says now', () => {
    let s = book.initialState();
    s = apply(s, book.decide(draft('2026-10', '2026-09', '2026-09-30T22:00:00.000Z', '2026-10-31T23:00:00.000Z'), s));
    // November closed in another zone: its natural start would leave an hour out.
    const nov = book.decide(draft('2026-11', '2026-10', '2026-11-01T00:00:00.000Z', '2026-12-01T00:00:00.000Z'), s);
    expect(nov[0]!.data).toMatchObject({ periodStart: '2026-10-31T23:00:00.000Z', periodEnd: '2026-12-01T00:00:00.000Z' });
  });

  it('drafts a month once while it has an invoice that is not void, numbers finalized ones in order and credits a void', () => {
    let s = book.initialState();
    s = apply(s, book.decide(draft('2026-10', '2026-09', 'a', 'b'), s));
    expect(book.decide(draft('2026-10', '2026-09', 'a', 'b'), s)).toEqual([]);
    const id = s.open['2026-10']!;
    const fin = book.decide({ type: 'finalize', invoiceId: id, computed }, s);
    expect(fin[0]).toMatchObject({ type: I.finalized, data: { number: 'INV-000001', total: '10.00' } });
    s = apply(s, fin);
    expect(book.decide({ type: 'finalize', invoiceId: id, computed }, s)).toEqual([]);
    const voided = book.decide({ type: 'void', invoiceId: id, reason: 'wrong' }, s);
    expect(voided[0]).toMatchObject({ type: I.voided, data: { creditNote: { number: 'CN-000001', amount: '10.00' } } });
    s = apply(s, voided);
    // The corrected invoice is a new one, numbered next.
    const again = book.decide(draft('2026-10', '2026-09', 'a', 'b'), s);
    expect(again[0]!.data.invoiceId).not.toBe(id);
    s = apply(s, again);
    expect(book.decide({ type: 'finalize', invoiceId: s.open['2026-10']!, computed }, s)[0]!.data.number).toBe('INV-000002');
    // A draft is not voided; a void is not finalized.
    expect(() => book.decide({ type: 'void', invoiceId: s.open['2026-10']!, reason: 'x' }, s)).toThrow(/grace window/);
    expect(() => book.decide({ type: 'finalize', invoiceId: id, computed }, s)).toThrow(/void/);
  });
});
