// Depth-first walk over a snapshot's trees, with logical paths. Used by check, diff, ls, stats and
// verification.
//
// Two things a hostile or damaged repository must not be able to do to a reader: overflow the stack
// (folders thousands of levels deep are real: the walk keeps its own stack, no recursion), and make
// it run forever (a few kilobytes of trees that name the same subtree twice at each of 30 levels stand
// for 2^30 entries: an ExpansionGuard stops a walk whose entries outnumber the distinct stored ones by
// far).
import { BulwarkError } from '../util/errors.js';
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

/** Entries a walk may visit before the guard compares them with the distinct ones. */
const GUARD_FREE_ENTRIES = 100_000;
/** How many times over the distinct stored entries a walk may visit, past that. */
const GUARD_RATIO = 1000;

/**
 * Counts entries visited against distinct trees loaded. Legitimate snapshots reuse subtrees (identical
 * folders deduplicate) but never a thousand times over across a hundred thousand entries.
 */
export class ExpansionGuard {
  private entries = 0;
  private distinctEntries = 0;
  private readonly trees = new Set<string>();

  tree(id: string, tree: Tree): void {
    if (this.trees.has(id)) return;
    this.trees.add(id);
    this.distinctEntries += tree.nodes.length;
  }

  entry(): void {
    if (++this.entries > GUARD_FREE_ENTRIES && this.entries > GUARD_RATIO * Math.max(1, this.distinctEntries)) {
      throw new BulwarkError('repository-corrupt', `the snapshot's folders expand to more than ${this.entries} entries from only ${this.distinctEntries} stored ones: the trees reference the same subtrees over and over`, {
        hint: 'the snapshot was crafted or damaged; it was not walked further',
      });
    }
  }
}

export interface WalkOptions {
  /** skip(treeId): do not descend into this subtree (e.g. already checked). */
  skip?: (treeId: string) => boolean;
  guard?: ExpansionGuard;
}

/** Yields every node under tree `id`, parents before children, in name order. */
export async function* walk(repo: TreeLoader, id: string, prefix = '', opts: WalkOptions = {}): AsyncGenerator<WalkEntry> {
  const guard = opts.guard ?? new ExpansionGuard();
  const first = await loadTree(repo, id);
  guard.tree(id, first);
  const stack: { nodes: TreeNode[]; at: number; prefix: string }[] = [{ nodes: first.nodes, at: 0, prefix }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    if (top.at >= top.nodes.length) {
      stack.pop();
      continue;
    }
    const node = top.nodes[top.at++]!;
    const path = `${top.prefix}/${displayName(nodeName(node))}`;
    guard.entry();
    yield { path, node };
    if (node.type === 'dir' && node.subtree && !(opts.skip?.(node.subtree) ?? false)) {
      const sub = await loadTree(repo, node.subtree);
      guard.tree(node.subtree, sub);
      stack.push({ nodes: sub.nodes, at: 0, prefix: path });
    }
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
