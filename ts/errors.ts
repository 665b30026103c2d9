/**
 * Errors of predump. Every error has a stable `code`: the core's codes (ESRCH,
 * EPERM, EKTHREAD, EZOMBIE, ESELF, ETRACED, EEXITED, ENOSPC, ESYS, EPARSE, EINVAL),
 * the page server's (EPROTO: the peer broke the protocol; ECONN: the connection failed,
 * was refused, reset or timed out; ETLS; EINTERRUPTED) and the control plane's own (EDIR,
 * EDIREXISTS, EIMAGE, EPARENT, EUSAGE).
 */
export class PredumpError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PredumpError';
    this.code = code;
  }
}

/** An error thrown by the native addon carries its code in `error.code`. */
export function fromNative(err: unknown): PredumpError {
  if (err instanceof PredumpError) return err;
  if (err instanceof Error) {
    const code = (err as Error & { code?: unknown }).code;
    return new PredumpError(typeof code === 'string' ? code : 'EINTERNAL', err.message, {
      cause: err,
    });
  }
  return new PredumpError('EINTERNAL', String(err));
}

/** Exit statuses of the CLI. */
export const EXIT = {
  ok: 0,
  /** The operation failed: nothing complete was written. */
  failed: 1,
  /** The command line was wrong. */
  usage: 2,
  /** The target exited during the drain: the images hold only what was read. */
  partial: 3,
} as const;
