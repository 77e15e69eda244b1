import type { ZxcvbnFactory, ZxcvbnResult } from '@zxcvbn-ts/core';

/** Characters an estimate reads: a secret whose first 64 are not guessable is not guessable whatever follows (and the cost stays bounded). */
export const ESTIMATED_LENGTH = 64;

let estimator: ZxcvbnFactory | undefined;

/**
 * How guessable `value` is, as zxcvbn-ts estimates it with its common (breached passwords,
 * keyboard layouts) and English dictionaries, `userInputs` (an email, a name) counted as known
 * words; its feedback is in English and never holds the value. The one estimator of Keel: the
 * password policy and the start-up check of operator secrets. Its dictionaries are loaded on the
 * first estimate (most processes never make one).
 */
export function estimateGuessability(value: string, userInputs: string[] = []): ZxcvbnResult {
  if (!estimator) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { ZxcvbnFactory: Factory } = require('@zxcvbn-ts/core') as typeof import('@zxcvbn-ts/core');
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const common = require('@zxcvbn-ts/language-common') as typeof import('@zxcvbn-ts/language-common');
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const en = require('@zxcvbn-ts/language-en') as typeof import('@zxcvbn-ts/language-en');
    estimator = new Factory({
      dictionary: { ...common.dictionary, ...en.dictionary },
      graphs: common.adjacencyGraphs,
      translations: en.translations,
      maxLength: ESTIMATED_LENGTH,
      l33tMaxSubstitutions: 10,
    });
  }
  return estimator.check(value, userInputs);
}
