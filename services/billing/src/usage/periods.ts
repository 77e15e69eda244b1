import { DateTime } from 'luxon';
import { KeelError } from '@keel/contracts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
/** The longest range one report covers. */
export const MAX_REPORT_DAYS = 400;

const invalid = (field: string, message: string) => new KeelError('validation_failed', `${field}: ${message}`, [{ field, message }]);

/** Checks an IANA time zone name (`Europe/Berlin`), answering it as given. */
export function timeZoneOf(zone: string | undefined): string {
  const z = zone ?? 'UTC';
  // luxon also takes "system" and "local" (the server's own zone): never what a caller means.
  if (/^(system|local)$/i.test(z) || !DateTime.now().setZone(z).isValid) throw invalid('timeZone', `"${z}" is not an IANA time zone (e.g. Europe/Berlin, America/Los_Angeles, UTC)`);
  return z;
}

/**
 * The instants [from, to) a report covers: a month or day of `zone` (its local midnights, DST
 * included), or the `from`/`to` given, which must fall on whole minutes (the rollups' finest grain).
 */
export function reportRange(q: { period?: string; from?: string; to?: string }, zone: string): { from: number; to: number } {
  let from: number;
  let to: number;
  if (q.period !== undefined) {
    if (q.from !== undefined || q.to !== undefined) throw invalid('period', 'give a period or from and to, not both');
    const [y, m, d] = q.period.split('-').map(Number) as [number, number, number | undefined];
    const start = DateTime.fromObject({ year: y, month: m, day: d ?? 1 }, { zone });
    if (!start.isValid || (d !== undefined && start.day !== d)) throw invalid('period', `${q.period} is not a date`);
    from = start.toMillis();
    to = start.plus(d === undefined ? { months: 1 } : { days: 1 }).toMillis();
  } else {
    if (q.from === undefined || q.to === undefined) throw invalid(q.from === undefined ? 'from' : 'to', 'give a period, or both from and to');
    from = Date.parse(q.from);
    to = Date.parse(q.to);
    for (const [field, t] of [['from', from], ['to', to]] as const) if (t % MINUTE !== 0) throw invalid(field, 'must fall on a whole minute');
    if (to <= from) throw invalid('to', 'must be after from');
  }
  if (to - from > MAX_REPORT_DAYS * DAY) throw invalid(q.period !== undefined ? 'period' : 'to', `a report covers at most ${MAX_REPORT_DAYS} days`);
  return { from, to };
}

export interface BucketRanges {
  day: [number, number][];
  hour: [number, number][];
  minute: [number, number][];
}

/**
 * [from, to) as whole UTC days, then whole hours and minutes at its edges: the rollups read to add
 * it up exactly (a local day of a zone at +05:30 starts on a half hour, so its edges are minutes).
 */
export function bucketRanges(from: number, to: number): BucketRanges {
  const out: BucketRanges = { day: [], hour: [], minute: [] };
  const ceil = (t: number, g: number) => Math.ceil(t / g) * g;
  const floor = (t: number, g: number) => Math.floor(t / g) * g;
  const split = (a: number, b: number, grains: [keyof BucketRanges, number][]): void => {
    if (a >= b) return;
    const [[name, size], ...finer] = grains as [[keyof BucketRanges, number], ...[keyof BucketRanges, number][]];
    const s = ceil(a, size);
    const e = floor(b, size);
    if (!finer.length || s < e) {
      if (s < e) out[name].push([s, e]);
      if (finer.length) {
        split(a, s, finer);
        split(e, b, finer);
      }
      return;
    }
    split(a, b, finer);
  };
  split(from, to, [['day', DAY], ['hour', HOUR], ['minute', MINUTE]]);
  return out;
}

/**
 * The rollup rows of [from, to): a SQL condition on `grain` and `bucket` (whole UTC days, then the
 * hours and minutes at the edges), its times appended to `params` as placeholders.
 */
export function bucketCondition(from: number, to: number, params: unknown[]): string {
  const ranges = bucketRanges(from, to);
  const where: string[] = [];
  for (const grain of ['day', 'hour', 'minute'] as const) {
    for (const [a, b] of ranges[grain]) {
      params.push(new Date(a).toISOString(), new Date(b).toISOString());
      where.push(`(grain = '${grain}' AND bucket >= $${params.length - 1} AND bucket < $${params.length})`);
    }
  }
  return `(${where.join(' OR ')})`;
}

/** The start of the UTC bucket of `grain` holding `t`. */
export function bucketOf(t: number, grain: 'minute' | 'hour' | 'day'): number {
  const size = grain === 'minute' ? MINUTE : grain === 'hour' ? HOUR : DAY;
  return Math.floor(t / size) * size;
}

export type PeriodUnit = 'day' | 'week' | 'month' | 'quarter' | 'year';

/** The calendar period of `zone` holding `at`: from its local start (a week from Monday) to the next one's, as UTC instants. */
export function periodOf(unit: PeriodUnit, zone: string, at: number): { start: number; end: number } {
  const start = DateTime.fromMillis(at, { zone }).startOf(unit === 'week' ? 'week' : unit);
  const end = start.plus({ [`${unit}s`]: 1 });
  return { start: start.toMillis(), end: end.toMillis() };
}
