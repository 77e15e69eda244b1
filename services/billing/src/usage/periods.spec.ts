import { bucketRanges, periodOf, reportRange, timeZoneOf } from './periods';
import { usageReportCsv } from '@keel/contracts';
import { choosePrice, rate } from './rating';

const t = (iso: string) => Date.parse(iso);
const span = (r: [number, number][]) => r.reduce((s, [a, b]) => s + (b - a), 0);

describe('report periods', () => {
  it('starts and ends a month at local midnight, DST included', () => {
    // Berlin: March 2026 starts at +01:00 and ends at +02:00 (the clocks go forward on the 29th).
    expect(reportRange({ period: '2026-03' }, 'Europe/Berlin')).toEqual({ from: t('2026-02-28T23:00:00Z'), to: t('2026-03-31T22:00:00Z') });
    // Los Angeles: November 2026 starts at -07:00 and ends at -08:00 (back on the 1st).
    expect(reportRange({ period: '2026-11' }, 'America/Los_Angeles')).toEqual({ from: t('2026-11-01T07:00:00Z'), to: t('2026-12-01T08:00:00Z') });
    // The day the clocks go back lasts 25 hours there.
    const day = reportRange({ period: '2026-11-01' }, 'America/Los_Angeles');
    expect(day.to - day.from).toBe(25 * 3_600_000);
    expect(reportRange({ period: '2026-12' }, 'UTC')).toEqual({ from: t('2026-12-01T00:00:00Z'), to: t('2027-01-01T00:00:00Z') });
  });

  it("resets a budget's month at local midnight, across a DST change in the month", () => {
    // The last instant of March in Berlin (+02:00 since the 29th) is still March's period; the next is April's.
    expect(periodOf('month', 'Europe/Berlin', t('2026-03-31T21:59:59.999Z'))).toEqual({ start: t('2026-02-28T23:00:00Z'), end: t('2026-03-31T22:00:00Z') });
    expect(periodOf('month', 'Europe/Berlin', t('2026-03-31T22:00:00Z')).start).toBe(t('2026-03-31T22:00:00Z'));
    // Los Angeles: November (-08:00 since the 1st) ends at 08:00 UTC on December 1st, not 07:00.
    expect(periodOf('month', 'America/Los_Angeles', t('2026-12-01T07:30:00Z'))).toEqual({ start: t('2026-11-01T07:00:00Z'), end: t('2026-12-01T08:00:00Z') });
    expect(periodOf('month', 'America/Los_Angeles', t('2026-12-01T08:00:00Z')).start).toBe(t('2026-12-01T08:00:00Z'));
    // A day and a week of the zone too (a week from Monday).
    expect(periodOf('day', 'America/Los_Angeles', t('2026-11-01T12:00:00Z'))).toEqual({ start: t('2026-11-01T07:00:00Z'), end: t('2026-11-02T08:00:00Z') });
    expect(periodOf('week', 'Europe/Berlin', t('2026-03-29T12:00:00Z'))).toEqual({ start: t('2026-03-22T23:00:00Z'), end: t('2026-03-29T22:00:00Z') });
  });

  it('refuses what is not a period, a zone or a whole-minute range', () => {
    expect(() => reportRange({ period: '2026-02-30' }, 'UTC')).toThrow(/not a date/);
    expect(() => reportRange({ from: '2026-01-01T00:00:30Z', to: '2026-01-02T00:00:00Z' }, 'UTC')).toThrow(/whole minute/);
    expect(() => reportRange({ from: '2026-01-02T00:00:00Z', to: '2026-01-01T00:00:00Z' }, 'UTC')).toThrow(/after from/);
    expect(() => reportRange({ from: '2024-01-01T00:00:00Z', to: '2026-01-01T00:00:00Z' }, 'UTC')).toThrow(/at most 400 days/);
    expect(() => reportRange({}, 'UTC')).toThrow(/period/);
    for (const zone of ['system', 'Local', 'Mars/Olympus']) expect(() => timeZoneOf(zone)).toThrow(/not an IANA time zone/);
    expect(timeZoneOf('Asia/Kathmandu')).toBe('Asia/Kathmandu');
  });

  it('covers a range exactly with whole UTC days, hours and minutes, none overlapping', () => {
    // A day in Kathmandu (+05:45) starts on a quarter hour.
    const { from, to } = reportRange({ period: '2026-06-15' }, 'Asia/Kathmandu');
    const r = bucketRanges(from, to);
    expect(span(r.day) + span(r.hour) + span(r.minute)).toBe(to - from);
    // 18:15 to 18:15 UTC: no whole UTC day, the hours from 19:00 to 18:00, a 45- and a 15-minute edge.
    expect(r).toEqual({ day: [], hour: [[t('2026-06-14T19:00:00Z'), t('2026-06-15T18:00:00Z')]], minute: [[t('2026-06-14T18:15:00Z'), t('2026-06-14T19:00:00Z')], [t('2026-06-15T18:00:00Z'), t('2026-06-15T18:15:00Z')]] });
    const week = bucketRanges(t('2026-06-01T05:30:00Z'), t('2026-06-08T05:30:00Z'));
    expect(week.day).toEqual([[t('2026-06-02T00:00:00Z'), t('2026-06-08T00:00:00Z')]]);
    expect(week.hour).toEqual([[t('2026-06-01T06:00:00Z'), t('2026-06-02T00:00:00Z')], [t('2026-06-08T00:00:00Z'), t('2026-06-08T05:00:00Z')]]);
    const all = [...r.day, ...r.hour, ...r.minute].sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < all.length; i++) expect(all[i]![0]).toBe(all[i - 1]![1]);
    expect(all[0]![0]).toBe(from);
    expect(all.at(-1)![1]).toBe(to);
    // A month in UTC is days only; an hour-aligned range inside one day is hours only.
    const month = reportRange({ period: '2026-02' }, 'UTC');
    expect(bucketRanges(month.from, month.to)).toEqual({ day: [[month.from, month.to]], hour: [], minute: [] });
    expect(bucketRanges(t('2026-02-01T03:00:00Z'), t('2026-02-01T05:00:00Z'))).toEqual({ day: [], hour: [[t('2026-02-01T03:00:00Z'), t('2026-02-01T05:00:00Z')]], minute: [] });
  });
});

describe('usage report CSV', () => {
  it('quotes a dimension a spreadsheet would run as a formula', () => {
    const m = { inputTokens: '1', cachedInputTokens: '0', outputTokens: '0', requests: '0', gpuSeconds: '0', cost: '0.5', records: 1, unpricedRecords: 0 };
    const csv = usageReportCsv({
      tenantId: '00000000-0000-4000-8000-000000000000', from: '2026-01-01T00:00:00.000Z', to: '2026-02-01T00:00:00.000Z', timeZone: 'UTC', groupBy: ['team'], currency: 'USD',
      rows: [{ key: { team: '=HYPERLINK("http://x","y")' }, ...m }, { key: { team: 'plain' }, ...m }], total: m,
    });
    const lines = csv.trim().split('\n');
    expect(lines[1]).toBe(`"'=HYPERLINK(""http://x"",""y"")",1,0,0,0,0,0.5,1,0`);
    expect(lines[2]).toBe('plain,1,0,0,0,0,0.5,1,0');
  });
});

describe('rating', () => {
  const prices = [
    { scope: 'platform', model: 'm', version: 1, rates: { inputPerMTok: '2', outputPerMTok: '8' }, effective_from: '2026-01-01T00:00:00Z', effective_to: null },
    { scope: 'platform', model: 'm', version: 2, rates: { inputPerMTok: '3' }, effective_from: '2026-06-01T00:00:00Z', effective_to: '2026-07-01T00:00:00Z' },
    { scope: 'tenant-a', model: 'm', version: 1, rates: { inputPerMTok: '1', outputPerMTok: '4' }, effective_from: '2026-03-01T00:00:00Z', effective_to: null },
  ];

  it('takes the tenant’s own price where one covers the time, else the latest platform version in force', () => {
    expect(choosePrice(prices, 'tenant-b', 'm', t('2026-02-01T00:00:00Z'))?.version).toBe(1);
    expect(choosePrice(prices, 'tenant-b', 'm', t('2026-06-15T00:00:00Z'))).toMatchObject({ scope: 'platform', version: 2 });
    expect(choosePrice(prices, 'tenant-b', 'm', t('2026-07-01T00:00:00Z'))).toMatchObject({ scope: 'platform', version: 1 });
    expect(choosePrice(prices, 'tenant-a', 'm', t('2026-06-15T00:00:00Z'))).toMatchObject({ scope: 'tenant-a' });
    expect(choosePrice(prices, 'tenant-a', 'm', t('2026-02-01T00:00:00Z'))).toMatchObject({ scope: 'platform', version: 1 });
    expect(choosePrice(prices, 'tenant-b', 'm', t('2025-12-31T23:59:59Z'))).toBeUndefined();
    expect(choosePrice(prices, 'tenant-b', 'other', t('2026-02-01T00:00:00Z'))).toBeUndefined();
  });

  it('prices exactly, and never rates at 0 what a price has no rate for', () => {
    // 0.1 + 0.2 in binary floats is not 0.3; here it is.
    expect(rate({ inputTokens: '100000', outputTokens: '25000' }, undefined, { inputPerMTok: '1', outputPerMTok: '8' }).cost!.toFixed()).toBe('0.3');
    expect(rate({ cachedInputTokens: '1000000' }, undefined, { inputPerMTok: '2.5' }).cost!.toFixed()).toBe('2.5');
    expect(rate({ gpuSeconds: '1800' }, 'H100', { gpuHour: { H100: '4.5' } }).cost!.toFixed()).toBe('2.25');
    expect(rate({ outputTokens: '1' }, undefined, { inputPerMTok: '1' })).toEqual({ missing: 'outputPerMTok' });
    expect(rate({ gpuSeconds: '1' }, 'A100', { gpuHour: { H100: '4' } })).toEqual({ missing: 'gpuHour.A100' });
    // A quantity of zero needs no rate.
    expect(rate({ inputTokens: '10', outputTokens: '0' }, undefined, { inputPerMTok: '1' }).cost!.toFixed()).toBe('0.00001');
  });
});
