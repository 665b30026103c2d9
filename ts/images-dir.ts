/**
 * The images directory: made 0700 when we create it, refused when it cannot hold
 * a new pre-dump, and cleaned of our files when a pre-dump fails.
 */
import { constants } from 'node:fs';
import { access, mkdir, readdir, rm, rmdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { PredumpError } from './errors.js';
import { imageFile } from './images/names.js';

/** A file a pre-dump writes (an image temporarily being written left out). */
function isImage(name: string): boolean {
  const f = imageFile(name);
  return f !== undefined && f.kind !== 'temp';
}

export interface ImagesDir {
  path: string;
  /** We made it, so a failure removes it again. */
  created: boolean;
}

/** Checks or creates `dir` for a new image set. */
export async function openImagesDir(dir: string): Promise<ImagesDir> {
  const abs = path.resolve(dir);
  const existing = await stat(abs).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw new PredumpError('EDIR', `cannot use images directory ${dir}: ${err.message}`);
  });
  if (existing === undefined) {
    const parent = path.dirname(abs);
    const parentStat = await stat(parent).catch(() => undefined);
    if (parentStat === undefined) {
      throw new PredumpError(
        'EDIR',
        `cannot create images directory ${dir}: its parent ${parent} does not exist`,
      );
    }
    if (!parentStat.isDirectory()) {
      throw new PredumpError(
        'EDIR',
        `cannot create images directory ${dir}: ${parent} is not a directory`,
      );
    }
    try {
      await mkdir(abs, { mode: 0o700 });
    } catch (err) {
      throw new PredumpError(
        'EDIR',
        `cannot create images directory ${dir}: ${(err as Error).message}`,
      );
    }
    return { path: abs, created: true };
  }
  if (!existing.isDirectory()) {
    throw new PredumpError('EDIR', `images directory ${dir} is not a directory`);
  }
  try {
    await access(abs, constants.W_OK | constants.X_OK);
  } catch {
    throw new PredumpError('EDIR', `images directory ${dir} is not writable`);
  }
  const images = (await readdir(abs)).filter(isImage);
  if (images.length > 0) {
    throw new PredumpError(
      'EDIREXISTS',
      `images directory ${dir} already holds images (${images.slice(0, 3).join(', ')}` +
        `${images.length > 3 ? ', …' : ''}): use an empty directory, or remove them first`,
    );
  }
  return { path: abs, created: false };
}

/** Removes what a failed pre-dump wrote, so no half set is left behind. */
export async function discardImages(dir: ImagesDir): Promise<void> {
  const names = await readdir(dir.path).catch(() => [] as string[]);
  for (const name of names) {
    // The directory held no images before us: every image file is ours, and so
    // are the image writer's temporary files.
    if (imageFile(name) !== undefined) {
      await rm(path.join(dir.path, name), { force: true });
    }
  }
  if (dir.created) await rmdir(dir.path).catch(() => undefined);
}
