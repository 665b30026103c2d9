/**
 * The options of `pre-dump` and `dump` that send the pages to a page server,
 * with CRIU's names (`--page-server --address A --port P`, `--tls*`).
 */
import type { TlsOptions } from '../page-server.js';
import type { PageServerTarget } from '../predump.js';

const GROUP = 'Page server (as criu --page-server):';

/** The options, declared once for yargs and the fast path. */
export const pageServerClientOptions = {
  'page-server': {
    type: 'boolean',
    default: false,
    group: GROUP,
    describe:
      'send the pages to a page server (criu page-server or predump page-server) at --address/--port ' +
      'instead of writing them into -D, which keeps what CRIU keeps locally (inventory, stats, the ' +
      'parent link) and predump-track.json, the pagemap sent (what the next pre-dump builds on)',
  },
  address: {
    type: 'string',
    group: GROUP,
    describe: "the page server's host name or IP address",
  },
  port: {
    type: 'number',
    group: GROUP,
    describe: "the page server's TCP port",
  },
  'page-server-format': {
    type: 'string',
    choices: ['criu-4.2', 'criu-4.1'] as const,
    default: 'criu-4.2' as const,
    group: GROUP,
    describe:
      'the header layout the server reads; it cannot tell: criu-4.2 (32-byte headers) for CRIU 4.2 ' +
      "and later and predump's server; criu-4.1 (24-byte headers) for CRIU 4.1 and older " +
      "(Debian 12's 3.17, Ubuntu 24.04's 3.17 / 3.19)",
  },
  'page-server-timeout': {
    type: 'number',
    default: 30,
    group: GROUP,
    describe:
      'give up when connecting, or when the server reads or answers nothing, for this many seconds',
  },
  tls: {
    type: 'boolean',
    default: false,
    group: GROUP,
    describe:
      "TLS, as CRIU's --tls: X.509 both ways, the server's certificate checked against --address " +
      'unless --tls-no-cn-verify',
  },
  'tls-cacert': {
    type: 'string',
    group: GROUP,
    describe: 'PEM file of the CAs to trust (default: the system CAs and /etc/pki/CA/cacert.pem)',
  },
  'tls-cacrl': {
    type: 'string',
    group: GROUP,
    describe: 'PEM revocation list (default: /etc/pki/CA/cacrl.pem if present)',
  },
  'tls-cert': {
    type: 'string',
    group: GROUP,
    describe: 'PEM certificate to present (default: /etc/pki/criu/cert.pem)',
  },
  'tls-key': {
    type: 'string',
    group: GROUP,
    describe: 'PEM private key of it (default: /etc/pki/criu/private/key.pem)',
  },
  'tls-no-cn-verify': {
    type: 'boolean',
    default: false,
    group: GROUP,
    describe: "do not check the server's certificate name against --address",
  },
} as const;

/** The options' own checks (yargs' .check; the fast path runs it too): throws if wrong. */
export function checkPageServerClient(argv: Record<string, unknown>): true {
  const a = argv as Record<string, unknown>;
  if (!a['page-server']) {
    const given = ['address', 'port', 'tls-cacert', 'tls-cacrl', 'tls-cert', 'tls-key'].find(
      (o) => a[o] !== undefined,
    );
    const flag = ['tls', 'tls-no-cn-verify'].find((o) => a[o] === true);
    if (given ?? flag) throw new Error(`--${given ?? flag} needs --page-server`);
    return true;
  }
  if (a.address === undefined || a.address === '') {
    throw new Error('--page-server needs --address (the page server host)');
  }
  const port = a.port as number | undefined;
  if (port === undefined || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error('--page-server needs --port: an integer from 1 to 65535');
  }
  const t = a['page-server-timeout'] as number;
  if (!(t > 0 && t * 1000 <= 2 ** 31 - 1)) {
    throw new Error('--page-server-timeout must be a positive number of seconds');
  }
  if (!a.tls) {
    const given = ['tls-cacert', 'tls-cacrl', 'tls-cert', 'tls-key'].find(
      (o) => a[o] !== undefined,
    );
    if (given ?? a['tls-no-cn-verify']) {
      throw new Error(`--${given ?? 'tls-no-cn-verify'} needs --tls`);
    }
  }
  return true;
}

/** The `--tls*` options, as yargs hands them to both ends (page-server and its clients). */
export interface TlsArgs {
  tls: boolean;
  tlsCacert?: string;
  tlsCacrl?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsNoCnVerify: boolean;
}

/** The TLS options the `--tls*` arguments give (undefined without --tls: plain TCP). */
export function tlsOptions(args: TlsArgs): TlsOptions | undefined {
  return args.tls
    ? {
        cacert: args.tlsCacert,
        cacrl: args.tlsCacrl,
        cert: args.tlsCert,
        key: args.tlsKey,
        noCnVerify: args.tlsNoCnVerify,
      }
    : undefined;
}

interface ClientArgs extends TlsArgs {
  pageServer: boolean;
  address?: string;
  port?: number;
  pageServerFormat: 'criu-4.2' | 'criu-4.1';
  pageServerTimeout: number;
}

/** The page server the arguments name, if any. */
export function pageServerTarget(args: ClientArgs): PageServerTarget | undefined {
  if (!args.pageServer) return undefined;
  return {
    address: args.address!,
    port: args.port!,
    format: args.pageServerFormat,
    timeoutMs: Math.round(args.pageServerTimeout * 1000),
    tls: tlsOptions(args),
  };
}
