/**
 * `predump check`: which kernel features predump relies on work on this machine.
 * Each one is tried for real (by the Rust core) on memory of this process or of a
 * short-lived child it forks; never on another process.
 */
import { readFileSync } from 'node:fs';
import type { Argv } from 'yargs';
import { EXIT, fromNative } from '../errors.js';
import type { KernelCheck } from '../generated/native.js';
import type { CommandSpec } from './fast-args.js';
import { exitStatusHelp, STATUS } from './options.js';
import { formatBytes, printJson, reportError, write, type ArgsOf } from './output.js';

type Args = ArgsOf<typeof builder>;

/** What each capability is for, shown by --help. */
const PURPOSES: [string, string][] = [
  ['process_vm_readv', 'read mode copies the pages with it after the target runs again'],
  ['ptrace', 'freezes the target (PTRACE_SEIZE + INTERRUPT) and injects calls into it'],
  ['pidfd_getfd', 'splice mode takes the pipes (and the userfaultfd) made inside the target'],
  ['PAGEMAP_SCAN', 'finds present pages fast (Linux 6.7+); else /proc/PID/pagemap is read'],
  ['soft-dirty', 'dirty tracking by clear_refs and pagemap bit 55 (CONFIG_MEM_SOFT_DIRTY)'],
  ['uffd-wp', 'dirty tracking by userfaultfd write-protection in async mode (Linux 6.7+)'],
  ['vmsplice-gift', 'splice mode references pages into pipes with vmsplice(SPLICE_F_GIFT)'],
  ['injection', "predump's own: system calls run inside the frozen target (x86_64 only so far)"],
];

const options = {
  json: { type: 'boolean', default: false, describe: 'print one JSON object on stdout' },
} as const;

export const spec: CommandSpec = { options };

export function builder(yargs: Argv) {
  return yargs
    .options(options)
    .example('predump check', 'a table of capabilities, then the summary')
    .example('predump check --json | jq .trackMemAuto', 'for scripts')
    .epilogue(
      'Each capability is tried for real, on a small private mapping of predump itself or on ' +
        'a child it forks and kills (never on another process):\n' +
        PURPOSES.map(([name, why]) => `  ${name.padEnd(17)} ${why}`).join('\n') +
        '\n\nSummary: read mode needs ptrace and process_vm_readv; splice mode needs ptrace, ' +
        'pidfd_getfd, vmsplice-gift and injection (else it falls back to read mode). Dirty ' +
        'tracking "auto" takes soft-dirty if it works, else uffd-wp (with injection), else none ' +
        '(every pre-dump full).\n' +
        'CRIU: its --track-mem is soft-dirty; only soft-dirty chains can be continued by criu dump, ' +
        "and a process tracked with uffd-wp must be untracked ('predump untrack') before criu dump.\n" +
        exitStatusHelp([
          ['0', 'the report, whatever is missing'],
          ['1', 'the probing itself failed'],
          STATUS.usage,
        ]),
    );
}

export async function handler(args: Args): Promise<void> {
  try {
    const { native } = await import('../native.js');
    const report = await native.checkKernel().catch((err: unknown) => {
      throw fromNative(err);
    });
    if (args.json) printJson(toJson(report));
    else write(process.stdout, render(report));
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
    pipes: pipes(r),
    capabilities: r.capabilities.map((c) => ({
      name: c.name,
      supported: c.supported,
      detail: c.detail,
    })),
    trackMemAuto: r.trackMemAuto,
    modes: { read: r.readMode, splice: r.spliceMode, freezeFree: r.freezeFreeMode },
    defaultMode: r.defaultMode,
    // A tree's auto (the core's; read: docs/TREES.md, "Freeze-free pre-dumps of a tree").
    defaultTreeMode: r.defaultTreeMode,
    criu: criu(r),
  };
}

/**
 * What CRIU can do with predump's chains here: its --track-mem is soft-dirty, so
 * only soft-dirty chains can be continued by criu dump; after uffd-wp tracking
 * the process holds a userfaultfd, which criu dump refuses.
 */
function criu(r: KernelCheck): { continuesChains: boolean; note: string } {
  const softDirty = r.capabilities.some((c) => c.name === 'soft-dirty' && c.supported);
  return softDirty
    ? {
        continuesChains: true,
        note:
          "criu dump --track-mem --prev-images-dir can continue predump's soft-dirty pre-dumps " +
          "(track-mem auto takes soft-dirty); after uffd-wp ones, 'predump untrack -t PID' first",
      }
    : {
        continuesChains: false,
        note:
          'no soft-dirty: criu dump cannot continue any chain here (its --track-mem needs it); after ' +
          "predump's uffd-wp pre-dumps run 'predump untrack -t PID' before a full criu dump",
      };
}

/** The pipe size predump asks for (splice mode's pipes, read mode's drain buffers). */
const WANTED_PIPE_BYTES = 4 << 20;
const GiB = 1 << 30;
/** CAP_SYS_RESOURCE's bit in /proc/PID/status's capability masks. */
const CAP_SYS_RESOURCE = 24n;

/** Whether CAP_SYS_RESOURCE is in this process's bounding set (undefined: unknown). */
function resourceInBoundingSet(): boolean | undefined {
  const m = /^CapBnd:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? ((BigInt(`0x${m[1]}`) >> CAP_SYS_RESOURCE) & 1n) === 1n : undefined;
}

/**
 * The size predump's pipes get here: 4 MiB with CAP_SYS_RESOURCE (or a pipe-max-size that
 * allows it), else pipe-max-size; and what that means for splice mode.
 */
function pipes(r: KernelCheck) {
  const max = r.pipeMaxSize ?? null;
  const pipeBytes =
    r.capSysResource || max === null ? WANTED_PIPE_BYTES : Math.min(max, WANTED_PIPE_BYTES);
  return {
    pipeBytes,
    /** Capped below the 4 MiB predump asks for. */
    capped: pipeBytes < WANTED_PIPE_BYTES,
    splicePipesPerGiB: Math.ceil(GiB / pipeBytes),
    capSysResourceInBoundingSet: resourceInBoundingSet() ?? null,
  };
}

const count = (n: number): string => n.toLocaleString('en-US');

/** The pipe lines of the report: the size, and when capped what it costs and how to lift it. */
function pipeLines(r: KernelCheck): string[] {
  const p = pipes(r);
  const max = r.pipeMaxSize ?? null;
  const head = `pipe-max-size      ${max === null ? 'unknown' : formatBytes(max)}`;
  if (!p.capped) {
    return [
      `${head}: predump's pipes get ${formatBytes(p.pipeBytes)} (${
        r.capSysResource ? 'CAP_SYS_RESOURCE goes past pipe-max-size' : 'pipe-max-size allows it'
      })`,
    ];
  }
  const full = Math.ceil(GiB / WANTED_PIPE_BYTES);
  const how =
    p.capSysResourceInBoundingSet === false
      ? 'or give predump CAP_SYS_RESOURCE: it is not in the bounding set here, so whatever started ' +
        'this session (a container runtime, a VM agent, a systemd unit) dropped it and only it ' +
        'can grant it (e.g. `docker run --cap-add SYS_RESOURCE`, or ' +
        '`AmbientCapabilities=CAP_SYS_RESOURCE` in a systemd unit)'
      : r.root
        ? 'or run predump with CAP_SYS_RESOURCE in its effective set (this process lacks it)'
        : 'or run predump as root, which has CAP_SYS_RESOURCE here';
  return [
    `${head}, and no CAP_SYS_RESOURCE to go past it: predump's pipes stay at ` +
      `${formatBytes(p.pipeBytes)} instead of ${formatBytes(WANTED_PIPE_BYTES)}`,
    `  cost             splice mode needs ${count(p.splicePipesPerGiB)} pipes per GiB instead of ` +
      `${count(full)} (2 fds each here, and one more vmsplice run inside the frozen target per ` +
      `pipe); read mode copies in ${formatBytes(p.pipeBytes)} steps instead of ` +
      `${formatBytes(WANTED_PIPE_BYTES)}`,
    `  to lift it       \`sysctl fs.pipe-max-size=${WANTED_PIPE_BYTES}\` as root, ${how}`,
  ];
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
  const lines = [
    `predump check: Linux ${r.kernel} ${r.arch}, ${r.root ? 'root' : 'not root'}, CAP_SYS_PTRACE ${yesNo(r.capSysPtrace)}`,
    '',
    row('capability', 'supported', 'detail'),
    ...r.capabilities.map((c) => row(c.name, yesNo(c.supported), c.detail)),
    '',
    `ptrace_scope       ${scope}`,
    ...pipeLines(r),
    `track-mem auto     ${r.trackMemAuto}`,
    `pre-dump modes     read ${yesNo(r.readMode)}, splice ${yesNo(r.spliceMode)}, freeze-free ${yesNo(r.freezeFreeMode)}`,
    `default mode       ${r.defaultMode === r.defaultTreeMode ? r.defaultMode : `${r.defaultMode} (one process); ${r.defaultTreeMode} (a tree)`}`,
    `criu               ${criu(r).note}`,
  ];
  if (!r.root && !r.capSysPtrace) {
    lines.push('note: not root: only processes of your own user can be pre-dumped');
  }
  return lines.join('\n') + '\n';
}
