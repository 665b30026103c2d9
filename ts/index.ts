/**
 * predump's programmatic API.
 *
 * ```ts
 * import { preDump, describeImages } from 'predump';
 * const result = await preDump({ pid: 4242, imagesDir: '/tmp/img' });
 * console.log(result.frozenMs, result.pagesWritten);
 * console.log(await describeImages('/tmp/img'));
 * ```
 *
 * The target must not be a child of the calling process: a parent's own
 * waitpid (Node's child_process does one) would take the ptrace stops predump
 * waits for. Start targets through a launcher, or use the CLI.
 */
export {
  preDump,
  type PreDumpOptions,
  type PreDumpResult,
  type PreDumpModeName,
} from './predump.js';
export { describeImages, type ImagesSummary } from './show.js';
export { PredumpError, EXIT, type ErrorCode } from './errors.js';
export { Workload, type WorkloadOptions } from './workload.js';
export * as images from './images/index.js';
