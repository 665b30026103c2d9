/**
 * The core's stable codes (crates/core/src/error.rs, `Error::code`), the page server's
 * among them (EPROTO: the peer broke the protocol; ECONN: the connection failed, was
 * refused, reset or timed out; ETLS; EINTERRUPTED).
 */
export const CORE_ERROR_CODES = [
  'ESRCH',
  'ETHREAD',
  'EKTHREAD',
  'EZOMBIE',
  'ESELF',
  'ECHILDTARGET',
  'EPERM',
  'ETRACED',
  'EEXITED',
  'ESYS',
  'ENOSPC',
  'EPARSE',
  'EIMAGE',
  'EBUSY',
  'EPROTO',
  'ECONN',
  'ETLS',
  'EINTERRUPTED',
  'EINVAL',
] as const;

/** The control plane's own codes. */
export const CONTROL_ERROR_CODES = [
  'EDIR',
  'EDIREXISTS',
  'EIMAGE',
  'EPARENT',
  'EUSAGE',
  'EBENCH',
  'ENOADDON',
  'ENOTHING',
  'ENOWORKLOAD',
  'EPLATFORM',
  'EWORKLOAD',
  'EINTERNAL',
] as const;

/** Every code a PredumpError can carry: declared once, here. */
export type ErrorCode = (typeof CORE_ERROR_CODES)[number] | (typeof CONTROL_ERROR_CODES)[number];

const ERROR_CODES: ReadonlySet<string> = new Set([...CORE_ERROR_CODES, ...CONTROL_ERROR_CODES]);

function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && ERROR_CODES.has(code);
}

/** Errors of predump. Every error has a stable `code` ([ErrorCode]). */
export class PredumpError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PredumpError';
    this.code = code;
  }
}

/** An error thrown by the native addon carries its code in `error.code`. */
export function fromNative(err: unknown): PredumpError {
  if (err instanceof PredumpError) return err;
  if (err instanceof Error) {
    const raw = (err as Error & { code?: unknown }).code;
    // The binding refuses its arguments with napi's InvalidArg status (an option out of
    // range, a mode or tracking the core refuses): the core's EINVAL.
    const code = raw === 'InvalidArg' ? 'EINVAL' : raw;
    return new PredumpError(isErrorCode(code) ? code : 'EINTERNAL', err.message, {
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
