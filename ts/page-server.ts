/**
 * A page server, as `criu page-server`: it waits for one client (`criu
 * pre-dump|dump --page-server`, or predump's own), stores the pages it sends
 * into `pagemap-ID.img` / `pages-ID.img`, and returns when the client has
 * closed the session. The Rust core speaks the protocol and writes the images;
 * this side prepares the directory and its `parent` link, and removes what a
 * failed session left.
 */
import { stat, symlink } from 'node:fs/promises';
import path from 'node:path';
import { fromNative, PredumpError } from './errors.js';
import { discardImages, openImagesDir } from './images-dir.js';
import { PARENT_LINK } from './images/index.js';
import { native } from './native.js';

export interface PageServerOptions {
  /** Where the images go: created 0700 if missing; must hold no images. */
  imagesDir: string;
  /** An IPv4 or IPv6 address to listen on; default: every IPv4 address (as CRIU). */
  address?: string;
  /** The TCP port; 0 (default): one the kernel picks, told to `onListening`. */
  port?: number;
  /**
   * The previous images directory of this chain, as CRIU takes it: the `parent`
   * link is made with this text, so a relative path is relative to `imagesDir`.
   * A client asks whether it holds its pagemap, and leaves unchanged pages to it.
   */
  prevImagesDir?: string;
  /** TLS with CRIU's options (absent: plain TCP, as CRIU without --tls). */
  tls?: TlsOptions;
  /** How long one read may wait for the client; default: no limit (as CRIU). */
  timeoutMs?: number;
  /** Called once the server listens, before it waits for the client. */
  onListening?: (at: { address: string; port: number }) => void;
  /** Aborting stops the server, removes what it stored, and rejects with EINTERRUPTED. */
  signal?: AbortSignal;
}

/**
 * CRIU's `--tls-*` options. Absent files are CRIU's defaults: the system's
 * trusted CAs plus /etc/pki/CA/cacert.pem, /etc/pki/CA/cacrl.pem if present,
 * /etc/pki/criu/cert.pem and /etc/pki/criu/private/key.pem.
 */
export interface TlsOptions {
  cacert?: string;
  cacrl?: string;
  cert?: string;
  key?: string;
  /** Do not check the peer certificate's name (CRIU's --tls-no-cn-verify). */
  noCnVerify?: boolean;
}

export interface ReceivedPagemap {
  kind: 'process' | 'shmem';
  /** The pid, or the shared memory object's id. */
  id: number;
  pagemapFile: string;
  pagesFile: string;
  /** The client was told that the parent holds this pagemap. */
  hasParent: boolean;
  entries: number;
  /** Pages stored (PE_PRESENT), left to the parent (PE_PARENT), left on the client (PE_LAZY alone). */
  pagesPresent: number;
  pagesParent: number;
  pagesLazy: number;
}

export interface PageServerResult {
  imagesDir: string;
  address: string;
  port: number;
  /** The client's address and port. */
  peer: string | null;
  /** The header layout the client used: CRIU ≤ 4.1's 24 bytes or 4.2's 32 (null: it only closed). */
  format: 'criu-4.1' | 'criu-4.2' | null;
  tls: boolean;
  parent: string | null;
  pagemaps: ReceivedPagemap[];
  bytesReceived: number;
  pageBytes: number;
  /** From the connection to the end of the session. */
  sessionMs: number;
  /** Time spent moving page data into the images. */
  writeMs: number;
  /** Page data per second of session, in MB/s (10^6 bytes). */
  receiveMBps: number;
  warnings: string[];
}

/** Serves one page-server client into a new images directory. */
export async function pageServer(options: PageServerOptions): Promise<PageServerResult> {
  const port = options.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new PredumpError('EINVAL', `port must be an integer from 0 to 65535, got ${port}`);
  }
  const imagesDir = path.resolve(options.imagesDir);
  let parent: string | null = null;
  if (options.prevImagesDir !== undefined) {
    // As CRIU: the link holds the text given, resolved from the images directory.
    parent = path.resolve(imagesDir, options.prevImagesDir);
    const st = await stat(parent).catch(() => undefined);
    if (!st?.isDirectory()) {
      throw new PredumpError(
        'EPARENT',
        `--prev-images-dir ${options.prevImagesDir}: no directory ${parent}` +
          (path.isAbsolute(options.prevImagesDir)
            ? ''
            : ' (a relative path is taken from -D, as CRIU does)'),
      );
    }
  }
  let server;
  try {
    server = native.PageServer.listen({ address: options.address, port, tls: options.tls });
  } catch (err) {
    throw fromNative(err);
  }
  let dir;
  try {
    dir = await openImagesDir(imagesDir);
  } catch (err) {
    server.abort();
    throw err;
  }
  const onAbort = (): void => server.abort();
  try {
    if (options.prevImagesDir !== undefined) {
      await symlink(options.prevImagesDir, path.join(dir.path, PARENT_LINK));
    }
    options.onListening?.({ address: server.address, port: server.port });
    if (options.signal?.aborted) server.abort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const r = await server
      .serve({ dir: dir.path, timeoutMs: options.timeoutMs })
      .catch((err: unknown) => {
        throw fromNative(err);
      });
    const sessionMs = r.timeUs / 1000;
    return {
      imagesDir: dir.path,
      address: server.address,
      port: server.port,
      peer: r.peer ?? null,
      format: (r.format ?? null) as PageServerResult['format'],
      tls: r.tls,
      parent,
      pagemaps: r.pagemaps.map((p) => ({
        kind: p.kind as ReceivedPagemap['kind'],
        id: p.id,
        pagemapFile: p.pagemapFile,
        pagesFile: p.pagesFile,
        hasParent: p.hasParent,
        entries: p.entries,
        pagesPresent: p.pagesPresent,
        pagesParent: p.pagesParent,
        pagesLazy: p.pagesLazy,
      })),
      bytesReceived: r.bytesReceived,
      pageBytes: r.pageBytes,
      sessionMs,
      writeMs: r.writeUs / 1000,
      receiveMBps: r.timeUs > 0 ? r.pageBytes / r.timeUs : 0,
      warnings: r.warnings,
    };
  } catch (err) {
    server.abort();
    await discardImages(dir);
    throw err;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
}
