/**
 * `predump page-server -D DIR [--port P]`: receive pre-dumps streamed from
 * another host with CRIU's page-server protocol, as `criu page-server` does.
 */
import { fstatSync, closeSync, writeSync } from 'node:fs';
import type { Argv } from 'yargs';
import { EXIT } from '../errors.js';
import type { PageServerResult } from '../page-server.js';
import { exitStatusHelp, imagesDirOption, STATUS } from './options.js';
import { tlsOptions } from './page-server-client.js';
import {
  formatBytes,
  formatMs,
  inform,
  printJsonLine,
  reportError,
  say,
  write,
  type ArgsOf,
} from './output.js';

type Args = ArgsOf<typeof builder>;

export function builder(yargs: Argv) {
  return yargs
    .option('images-dir', {
      ...imagesDirOption,
      describe:
        'directory for the received images (pagemap-ID.img, pages-ID.img): created 0700 if missing, must hold no images',
    })
    .option('port', {
      type: 'number',
      default: 0,
      describe:
        'TCP port to listen on; 0: a free one, printed on stdout when listening (a line of its own, or a JSON line with --json)',
    })
    .option('address', {
      type: 'string',
      describe: 'IPv4 or IPv6 address to listen on (default: every IPv4 address, as CRIU)',
    })
    .option('prev-images-dir', {
      type: 'string',
      describe:
        "the previous images directory of this chain on this host: a 'parent' link is made with this text " +
        '(so a relative path is relative to -D, as CRIU does); clients leave unchanged pages to it',
    })
    .option('status-fd', {
      type: 'number',
      describe: "write one \\0 byte to this fd and close it once listening (CRIU's --status-fd)",
    })
    .option('timeout', {
      type: 'number',
      describe:
        'give up when the client sends nothing for this many seconds (default: wait as long as it takes, as CRIU)',
    })
    .option('tls', {
      type: 'boolean',
      default: false,
      describe:
        "TLS, as CRIU's --tls: X.509 both ways, a client certificate required, names checked unless --tls-no-cn-verify",
    })
    .option('tls-cacert', {
      type: 'string',
      describe: 'PEM file of the CAs to trust (default: the system CAs and /etc/pki/CA/cacert.pem)',
    })
    .option('tls-cacrl', {
      type: 'string',
      describe: 'PEM revocation list (default: /etc/pki/CA/cacrl.pem if present)',
    })
    .option('tls-cert', {
      type: 'string',
      describe: 'PEM certificate to present (default: /etc/pki/criu/cert.pem)',
    })
    .option('tls-key', {
      type: 'string',
      describe: 'PEM private key of it (default: /etc/pki/criu/private/key.pem)',
    })
    .option('tls-no-cn-verify', {
      type: 'boolean',
      default: false,
      describe:
        "do not check the client's certificate name against --address (CRIU's server checks it when --address is given)",
    })
    .option('json', {
      type: 'boolean',
      default: false,
      describe:
        'JSON lines on stdout: {"listening":{address,port}} once listening, then the result object',
    })
    .check((argv) => {
      const port = argv.port as number;
      if (!Number.isInteger(port) || port < 0 || port > 65535) {
        throw new Error('--port must be a TCP port: an integer from 0 to 65535');
      }
      const fd = argv['status-fd'] as number | undefined;
      if (fd !== undefined) {
        if (!Number.isInteger(fd) || fd < 0)
          throw new Error('--status-fd must be a file descriptor number');
        try {
          fstatSync(fd);
        } catch {
          throw new Error(`--status-fd ${fd}: no such open file descriptor`);
        }
      }
      if (!argv.tls) {
        const given = ['tls-cacert', 'tls-cacrl', 'tls-cert', 'tls-key'].filter(
          (o) => argv[o] !== undefined,
        );
        if (given.length > 0 || argv['tls-no-cn-verify']) {
          throw new Error(`--${given[0] ?? 'tls-no-cn-verify'} needs --tls`);
        }
      }
      const timeout = argv.timeout as number | undefined;
      if (timeout !== undefined && !(timeout > 0 && timeout * 1000 <= 2 ** 31 - 1)) {
        throw new Error('--timeout must be a positive number of seconds');
      }
      return true;
    })
    .epilogue(
      exitStatusHelp([
        ['0', 'the client sent its pages and closed the session: the images are complete'],
        ['1', 'the session failed; nothing of it was kept (the message says why)'],
        STATUS.usage,
        ['130, 143', 'stopped by SIGINT / SIGTERM; nothing of the session was kept'],
      ]),
    )
    .example(
      'predump page-server -D /var/lib/migration/1 --port 27000',
      'wait for the first pre-dump',
    )
    .example(
      'predump page-server -D /var/lib/migration/2 --port 27000 --prev-images-dir ../1',
      'the next one, on top of the first',
    )
    .example(
      'criu pre-dump -t 4242 -D /tmp/local --page-server --address dst-host --port 27000',
      'on the other host: CRIU (any version) or predump sends the pages',
    );
}

export async function handler(args: Args): Promise<void> {
  const abort = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => abort.abort(sig);
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  try {
    const { pageServer } = await import('../page-server.js');
    const result = await pageServer({
      imagesDir: args.imagesDir,
      address: args.address,
      port: args.port,
      prevImagesDir: args.prevImagesDir,
      tls: tlsOptions(args),
      timeoutMs: args.timeout === undefined ? undefined : Math.round(args.timeout * 1000),
      signal: abort.signal,
      onListening: ({ address, port }) => {
        if (args.json) printJsonLine({ ok: true, listening: { address, port } });
        else write(process.stdout, `${port}\n`);
        inform(
          `predump page-server: listening on ${address}:${port}, images into ${args.imagesDir}`,
        );
        if (args.statusFd !== undefined) {
          writeSync(args.statusFd, Buffer.from([0]));
          closeSync(args.statusFd);
        }
      },
    });
    // The whole process's peak resident size: what a receiving host must have.
    const peakRssBytes = process.resourceUsage().maxRSS * 1024;
    if (args.json) printJsonLine({ ok: true, ...result, peakRssBytes });
    for (const w of result.warnings) say(`predump page-server: warning: ${w}`);
    inform(summary(result));
    process.exitCode = EXIT.ok;
  } catch (err) {
    const status = reportError(err, false);
    if (args.json) {
      const e = err as { code?: unknown; message?: unknown };
      const error = {
        code: typeof e.code === 'string' ? e.code : 'EINTERNAL',
        message: String(e.message ?? err),
      };
      printJsonLine({ ok: false, error });
    }
    if (abort.signal.aborted) {
      say('predump page-server: stopped; nothing of the session was kept');
      process.exit(abort.signal.reason === 'SIGINT' ? 130 : 143);
    }
    say('predump page-server: nothing of the session was kept');
    process.exitCode = status;
  } finally {
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
  }
}

function summary(r: PageServerResult): string {
  const layout = r.format === null ? 'no pages' : `${r.format} header layout`;
  const lines = [
    `received from ${r.peer ?? '?'} into ${r.imagesDir} (${layout}${r.tls ? ', TLS' : ''})`,
  ];
  for (const p of r.pagemaps) {
    const parent = p.pagesParent > 0 ? `, ${p.pagesParent} left to the parent` : '';
    const lazy = p.pagesLazy > 0 ? `, ${p.pagesLazy} lazy left on the client` : '';
    lines.push(
      `  ${p.pagemapFile}: ${p.entries} entries, ${p.pagesPresent} pages in ${p.pagesFile}${parent}${lazy}`,
    );
  }
  const mbps = r.receiveMBps > 0 ? `, ${r.receiveMBps.toFixed(0)} MB/s` : '';
  lines.push(`  ${formatBytes(r.pageBytes)} of pages in ${formatMs(r.sessionMs)}${mbps}`);
  return lines.join('\n');
}
