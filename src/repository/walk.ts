// Depth-first walk over a snapshot's trees, with logical paths. Used by check, diff, ls and stats.
import type { Repository } from './repository.js';
import { decodeTree, displayName, nodeName, type Tree, type TreeNode } from './tree.js';

export type TreeLoader = Pick<Repository, 'loadBlob'>;

export async function loadTree(repo: TreeLoader, id: string): Promise<Tree> {
  return decodeTree(await repo.loadBlob('tree', id), id);
}

export interface WalkEntry {
  path: string;
  node: TreeNode;
}

/** Yields every node under tree `id`; `skip(treeId)` lets callers avoid re-walking shared subtrees. */
export async function* walk(repo: TreeLoader, id: string, prefix = '', skip?: (treeId: string) => boolean): AsyncGenerator<WalkEntry> {
  const tree = await loadTree(repo, id);
  for (const node of tree.nodes) {
    const path = `${prefix}/${displayName(nodeName(node))}`;
    yield { path, node };
    if (node.type === 'dir' && node.subtree && !(skip?.(node.subtree) ?? false)) yield* walk(repo, node.subtree, path, skip);
  }
}

/** Finds the node at a logical path ("/etc/hosts"); the root itself returns undefined node with its tree. */
export async function lookupPath(repo: TreeLoader, rootTree: string, path: string): Promise<{ node?: TreeNode; tree?: string } | undefined> {
  const parts = path.split('/').filter(Boolean);
  let tree = rootTree;
  let node: TreeNode | undefined;
  for (let i = 0; i < parts.length; i++) {
    const t = await loadTree(repo, tree);
    node = t.nodes.find((n) => displayName(nodeName(n)) === parts[i]);
    if (!node) return undefined;
    if (i < parts.length - 1) {
      if (node.type !== 'dir' || !node.subtree) return undefined;
      tree = node.subtree;
    }
  }
  return node ? { node, ...(node.subtree ? { tree: node.subtree } : {}) } : { tree: rootTree };
}
