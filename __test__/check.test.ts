/**
 * `predump check`: every capability probed, reported as JSON and as a table, exit 0.
 * The expected values are this project's development machines (DESIGN.md): Linux 6.18
 * x86_64 as root, without CONFIG_MEM_SOFT_DIRTY, with PAGEMAP_SCAN and uffd-wp async.
 */
import test from 'ava';
import { parseJson, runCli } from './helpers.js';

interface CheckJson {
  ok: true;
  kernel: string;
  arch: string;
  root: boolean;
  capSysPtrace: boolean;
  ptraceScope: number | null;
  pipeMaxSize: number | null;
  capabilities: { name: string; supported: boolean; detail: string }[];
  trackMemAuto: string;
  modes: { read: boolean; splice: boolean; freezeFree: boolean };
  defaultMode: string;
  defaultTreeMode: string;
  criu: { continuesChains: boolean; note: string };
}

const CAPABILITIES = [
  'process_vm_readv',
  'ptrace',
  'pidfd_getfd',
  'PAGEMAP_SCAN',
  'soft-dirty',
  'uffd-wp',
  'vmsplice-gift',
  'injection',
];

test('check --json reports every capability, as found on this machine', async (t) => {
  const r = await runCli(['check', '--json']);
  t.is(r.code, 0, r.stderr);
  const j = parseJson<CheckJson>(t, r);
  t.is(j.ok, true);
  t.regex(j.kernel, /^\d+\.\d+/);
  t.is(j.arch, 'x86_64');
  t.is(typeof j.root, 'boolean');
  t.deepEqual(
    j.capabilities.map((c) => c.name),
    CAPABILITIES,
  );
  for (const c of j.capabilities) {
    t.is(typeof c.supported, 'boolean', c.name);
    t.true(c.detail.length > 0, `${c.name} has a detail`);
  }
  const cap = Object.fromEntries(j.capabilities.map((c) => [c.name, c]));
  const supported = (name: string): boolean => cap[name]!.supported;
  t.true(supported('PAGEMAP_SCAN'), cap['PAGEMAP_SCAN']!.detail);
  t.false(supported('soft-dirty'));
  t.regex(cap['soft-dirty']!.detail, /bit 55/);
  t.regex(cap['soft-dirty']!.detail, /CONFIG_MEM_SOFT_DIRTY/);
  for (const name of ['uffd-wp', 'ptrace', 'process_vm_readv', 'pidfd_getfd', 'injection']) {
    t.true(supported(name), `${name}: ${cap[name]!.detail}`);
  }
  t.is(j.trackMemAuto, 'uffd-wp');
  t.true(j.modes.read);
  t.is(
    j.modes.splice,
    supported('ptrace') &&
      supported('pidfd_getfd') &&
      supported('vmsplice-gift') &&
      supported('injection'),
  );
  t.true(j.modes.freezeFree);
  t.is(j.defaultMode, 'freeze-free');
  t.is(j.defaultTreeMode, 'read');
  // No soft-dirty: CRIU cannot continue a chain here, and the handover is said.
  t.false(j.criu.continuesChains);
  t.regex(j.criu.note, /criu dump cannot continue any chain here .*'predump untrack -t PID'/);
  t.true(j.pipeMaxSize === null || j.pipeMaxSize > 0);
  t.is(r.stderr, '');
});

test('check prints a table with every capability and the summary', async (t) => {
  const r = await runCli(['check']);
  t.is(r.code, 0, r.stderr);
  const lines = r.stdout.split('\n');
  t.regex(lines[0]!, /^predump check: Linux \S+ x86_64/);
  for (const name of CAPABILITIES) {
    const row = lines.find((l) => l.startsWith(`${name} `));
    t.truthy(row, `a row for ${name}`);
    t.regex(row!, new RegExp(`^${name} +(yes|no) +\\S`));
  }
  // The columns are aligned: every row's yes/no starts at the same place.
  const rows = lines.filter((l) => CAPABILITIES.some((n) => l.startsWith(`${n} `)));
  const at = new Set(rows.map((l) => l.search(/ (yes|no) /)));
  t.is(at.size, 1, rows.join('\n'));
  t.regex(r.stdout, /^soft-dirty +no +.*bit 55/m);
  t.regex(r.stdout, /^track-mem auto +uffd-wp$/m);
  t.regex(r.stdout, /^pre-dump modes +read yes, splice (yes|no), freeze-free yes$/m);
  t.regex(r.stdout, /^default mode +freeze-free \(one process\); read \(a tree\)$/m);
  t.regex(r.stdout, /^criu +no soft-dirty: criu dump cannot continue any chain here/m);
  t.regex(r.stdout, /^pipe-max-size /m);
  t.regex(r.stdout, /^ptrace_scope /m);
});

test('check --help explains what each capability is for', async (t) => {
  const r = await runCli(['check', '--help']);
  t.is(r.code, 0, r.stderr);
  for (const name of CAPABILITIES) t.regex(r.stdout, new RegExp(`^ +${name} +\\S`, 'm'));
  t.regex(r.stdout, /read mode needs ptrace and process_vm_readv/);
  t.regex(r.stdout, /'predump untrack'\) before criu dump/);
  t.regex(r.stdout, /--json/);
});
