import { parentPort } from 'node:worker_threads';
import { entryProblem, VerifyRow } from './verify-entry';

/** A page's entries checked in order: the first one whose content is wrong, or none (see VerifyPool). */
parentPort!.on('message', ({ id, rows }: { id: number; rows: VerifyRow[] }) => {
  for (let i = 0; i < rows.length; i++) {
    const problem = entryProblem(rows[i]!);
    if (problem !== null) {
      parentPort!.postMessage({ id, index: i, problem });
      return;
    }
  }
  parentPort!.postMessage({ id, index: -1, problem: null });
});
