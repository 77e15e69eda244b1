/** A CSV field: quoted when it holds a quote, comma or line break. */
export const csvField = (v: string | number | null | undefined) => {
  const s = v === null || v === undefined ? '' : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};

/** A text cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) is quoted with `'` (OWASP's CSV injection rule). */
export const textCell = (v: string | null) => (v !== null && /^[=+\-@\t\r]/.test(v) ? `'${v}` : v);
