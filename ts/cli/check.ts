/**
 * `predump check`: which kernel features predump relies on work on this machine.
 * Each one is tried for real (by the Rust core) on memory of this process or of a
 * short-lived child it forks; never on another process.
 */
import type { Argv } from 'yargs';
import { EXIT, fromNative } from '../errors.js';
import type { KernelCheck } from '../generated/native.js';
import { native } from '../native.js';
import { formatBytes, printJson, reportError, type ArgsOf } from './output.js';

type Args = ArgsOf<typeof builder>;

export const command = 'check';
export const describe = 'Report which kernel features predump can use here (a report: exit 0)';

/** What each capability is for, shown by --help. */
const PURPOSES: [string, string][] = [
  ['process_vm_readv', 'read mode copies the pages with it after the target runs again'],
  ['ptrace', 'freezes the target (PTRACE_SEIZE + INTERRUPT) and injects calls into it'],
  ['pidfd_getfd', 'splice mode takes the pipes (and the userfaultfd) made inside the target'],
  ['PAGEMAP_SCAN', 'finds present pages fast (Linux 6.7+); else /proc/PID/pagemap is read'],
  ['soft-dirty', 'dirty tracking by clear_refs and pagemap bit 55 (CONFIG_MEM_SOFT_DIRTY)'],
  ['uffd-wp', 'dirty tracking by userfaultfd write-protection in async mode (Linux 6.7+)'],
  ['vmsplice-gift', 'splice mode references pages into pipes with vmsplice(SPLICE_F_GIFT)'],
];

export function builder(yargs: Argv) {
  return yargs
    .option('json', {
      type: 'boolean',
      default: false,
      describe: 'print one JSON object on stdout',
    })
    .example('predump check', 'a table of capabilities, then the summary')
    .example('predump check --json | jq .trackMemAuto', 'for scripts')
    .epilogue(
      'Each capability is tried for real, on a small private mapping of predump itself or on ' +
        'a child it forks and kills (never on another process):\n' +
        PURPOSES.map(([name, why]) => `  ${name.padEnd(17)} ${why}`).join('\n') +
        '\n\nSummary: read mode needs ptrace and process_vm_readv; splice mode needs ptrace, ' +
        'pidfd_getfd and vmsplice-gift (else it falls back to read mode). Dirty tracking ' +
        '"auto" takes soft-dirty if it works, else uffd-wp, else none (every pre-dump full).\n' +
        'Exit status: 0 whatever is missing (it is a report), 1 if the probing itself failed.',
    );
}

export async function handler(args: Args): Promise<void> {
  try {
    const report = await native.checkKernel().catch((err: unknown) => {
      throw fromNative(err);
    });
    if (args.json) printJson(toJson(report));
    else process.stdout.write(render(report));
    process.exitCode = EXIT.ok;
  } catch (err) {
    process.exitCode = reportError(err, args.json);
  }
}

export function toJson(r: KernelCheck) {
  return {
    ok: true as const,
    kernel: r.kernel,
    arch: r.arch,
    root: r.root,
    capSysPtrace: r.capSysPtrace,
    capSysResource: r.capSysResource,
    ptraceScope: r.ptraceScope ?? null,
    pipeMaxSize: r.pipeMaxSize ?? null,
    capabilities: r.capabilities.map((c) => ({
      name: c.name,
      supported: c.supported,
      detail: c.detail,
    })),
    trackMemAuto: r.trackMemAuto,
    modes: { read: r.readMode, splice: r.spliceMode, freezeFree: freezeFree(r) },
    defaultMode: freezeFree(r) && r.trackMemAuto === 'uffd-wp' ? 'freeze-free' : 'read',
  };
}

/** The freeze-free path needs read mode's calls and uffd-wp async. */
function freezeFree(r: KernelCheck): boolean {
  return r.readMode && r.capabilities.some((c) => c.name === 'uffd-wp' && c.supported);
}

/** What /proc/sys/kernel/yama/ptrace_scope allows. */
const YAMA_SCOPES = [
  'classic: same user',
  'descendants only, or CAP_SYS_PTRACE',
  'CAP_SYS_PTRACE only',
  'ptrace disabled',
];

const yesNo = (b: boolean): string => (b ? 'yes' : 'no');

function render(r: KernelCheck): string {
  const nameWidth = Math.max('capability'.length, ...r.capabilities.map((c) => c.name.length));
  const row = (a: string, b: string, c: string): string =>
    `${a.padEnd(nameWidth)}  ${b.padEnd(9)}  ${c}`.trimEnd();
  const scope =
    r.ptraceScope === undefined || r.ptraceScope === null
      ? 'absent (no Yama)'
      : `${r.ptraceScope} (${YAMA_SCOPES[r.ptraceScope] ?? 'unknown value'})`;
  const pipeMax =
    r.pipeMaxSize === undefined || r.pipeMaxSize === null
      ? 'unknown'
      : `${formatBytes(r.pipeMaxSize)} (${
          r.capSysResource
            ? 'CAP_SYS_RESOURCE: pipes may be larger'
            : 'no CAP_SYS_RESOURCE: drain pipes stop there'
        })`;
  const lines = [
    `predump check: Linux ${r.kernel} ${r.arch}, ${r.root ? 'root' : 'not root'}, CAP_SYS_PTRACE ${yesNo(r.capSysPtrace)}`,
    '',
    row('capability', 'supported', 'detail'),
    ...r.capabilities.map((c) => row(c.name, yesNo(c.supported), c.detail)),
    '',
    `ptrace_scope       ${scope}`,
    `pipe-max-size      ${pipeMax}`,
    `track-mem auto     ${r.trackMemAuto}`,
    `pre-dump modes     read ${yesNo(r.readMode)}, splice ${yesNo(r.spliceMode)}, freeze-free ${yesNo(freezeFree(r))}`,
    `default mode       ${toJson(r).defaultMode}`,
  ];
  if (!r.root && !r.capSysPtrace) {
    lines.push('note: not root: only processes of your own user can be pre-dumped');
  }
  return lines.join('\n') + '\n';
}
