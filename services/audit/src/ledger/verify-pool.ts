import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { entryProblem, VerifyRow } from './verify-entry';

/** The first entry of a page whose content is wrong: its index in the page, and why. */
export interface ContentFailure {
  index: number;
  problem: string;
}

const SCRIPT = join(__dirname, 'verify-worker.js');

/** The content checks of a page, in order, on this thread. */
export function checkInline(rows: VerifyRow[]): ContentFailure | null {
  for (let i = 0; i < rows.length; i++) {
    const problem = entryProblem(rows[i]!);
    if (problem !== null) return { index: i, problem };
  }
  return null;
}

/**
 * Worker threads that check the content of whole pages of entries (parse, hash, indexed columns):
 * given its stored prev_hash each entry's check is independent, so pages are checked side by side
 * while the verifying thread reads the next ones and checks the links in order. Workers are
 * started on first use and kept (they do not hold the process open); one that fails fails the
 * checks it had, and the pool starts afresh on the next use.
 */
export class VerifyPool {
  private workers: Worker[] = [];
  private readonly pending = new Map<number, { worker: Worker; resolve: (f: ContentFailure | null) => void; reject: (e: Error) => void }>();
  private ids = 0;
  private turn = 0;

  /** False where the worker script is not built (running from TypeScript sources): checks run inline then. */
  static available(): boolean {
    return existsSync(SCRIPT);
  }

  constructor(private readonly size = Math.max(1, Math.min(4, availableParallelism() - 1))) {}

  check(rows: VerifyRow[]): Promise<ContentFailure | null> {
    if (!rows.length) return Promise.resolve(null);
    if (this.workers.length < this.size) this.workers.push(this.spawn());
    const worker = this.workers[this.turn++ % this.workers.length]!;
    const id = ++this.ids;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { worker, resolve, reject });
      worker.postMessage({ id, rows });
    });
  }

  async close(): Promise<void> {
    const workers = this.workers;
    this.workers = [];
    await Promise.all(workers.map((w) => w.terminate()));
  }

  private spawn(): Worker {
    const worker = new Worker(SCRIPT);
    worker.unref();
    worker.on('message', ({ id, index, problem }: { id: number; index: number; problem: string | null }) => {
      const p = this.pending.get(id);
      if (!p) return;
      this.pending.delete(id);
      p.resolve(index < 0 ? null : { index, problem: problem! });
    });
    const fail = (error: Error) => {
      this.workers = this.workers.filter((w) => w !== worker);
      for (const [id, p] of this.pending) {
        if (p.worker !== worker) continue;
        this.pending.delete(id);
        p.reject(error);
      }
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`a ledger verification worker exited (code ${code})`)));
    return worker;
  }
}
