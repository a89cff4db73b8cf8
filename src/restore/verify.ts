// Verification after a restore: every restored file is read back and must chunk to exactly the blob
// ids the snapshot lists. Walks through directory handles (any depth, any name bytes) and streams.
import { constants, promises as fsp } from 'node:fs';
import { FileChunks } from '../repository/file-chunks.js';
import type { Repository } from '../repository/repository.js';
import { displayName, nodeName, type TreeNode } from '../repository/tree.js';
import { loadTree } from '../repository/walk.js';
import { DirHandle } from '../util/dirhandle.js';
import { compileGlobs } from '../util/glob.js';

export interface VerifyResult {
  files: number;
  mismatches: string[];
}

type VerifyRepo = Pick<Repository, 'loadBlob' | 'blobId' | 'config' | 'zeroChunk'>;

/** `includes`: the same patterns the restore used; files they filtered out are not expected in the target. */
export async function verifyRestored(repo: VerifyRepo, nodes: TreeNode[], target: string, logicalDir: string, skip: ReadonlySet<string>, includes?: string[]): Promise<VerifyResult> {
  const matcher = includes && includes.length > 0 ? compileGlobs(includes) : undefined;
  const fileChunks = new FileChunks(repo.config.chunker);
  const zeroId = repo.zeroChunk().id;
  const result: VerifyResult = { files: 0, mismatches: [] };

  const fileMatches = async (path: Buffer, node: TreeNode): Promise<boolean> => {
    // Only ever a regular file this restore wrote: O_NONBLOCK so that a fifo in its place cannot make
    // the open wait forever, O_NOFOLLOW so that a symlink is not read through.
    const fh = await fsp.open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch(() => undefined);
    if (!fh) return false;
    try {
      const st = await fh.stat();
      if (!st.isFile()) return false;
      const want = node.content ?? [];
      let i = 0;
      // Holes restored as holes are not read back: they are zeros by definition.
      for await (const { bytes, zero } of fileChunks.chunks(fh, st.size, st.blocks * 512)) {
        if (want[i++] !== (zero ? zeroId : repo.blobId(bytes))) return false;
      }
      return i === want.length;
    } finally {
      await fh.close();
    }
  };

  // Mirrors the restorer: inside an included folder everything was restored.
  const visit = async (dir: DirHandle, list: TreeNode[], logical: string, within: boolean): Promise<void> => {
    for (const node of list) {
      const name = nodeName(node);
      const shown = `${logical}/${displayName(name)}`;
      if (skip.has(shown)) continue;
      const included = within || !matcher || matcher(shown);
      if (node.type === 'file') {
        if (!included) continue;
        result.files++;
        if (!(await fileMatches(dir.child(name), node))) result.mismatches.push(shown);
      } else if (node.type === 'dir' && node.subtree) {
        const sub = await DirHandle.open(dir.child(name)).catch(() => undefined);
        if (!sub) continue; // filtered out by --include, or reported by the restore already
        try {
          await visit(sub, (await loadTree(repo, node.subtree)).nodes, shown, included);
        } finally {
          await sub.close();
        }
      }
    }
  };

  const root = await DirHandle.open(target);
  try {
    await visit(root, nodes, logicalDir, false);
  } finally {
    await root.close();
  }
  return result;
}
