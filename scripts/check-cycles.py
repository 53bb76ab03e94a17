#!/usr/bin/env python3
"""Reports import cycles between the top-level modules of each crate.

For every `src/` tree it maps each module (`a/b.rs` and `a/b/mod.rs` both
count as module `a`, the crate's first level) to the modules its
`use crate::x` / `crate::x::` paths name, then looks for cycles. A child
module naming its own parent (`super::`) is not an edge. Exit status 1 if
any crate has a cycle.

    python3 scripts/check-cycles.py [crate dirs...]
"""
import os
import re
import sys

def top_modules(src):
    graph = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)
            parts = rel[:-3].split(os.sep)
            mod = parts[0]
            if mod in ('lib', 'main'):
                continue
            text = open(path, encoding='utf-8').read()
            # Leave out tests: they may use anything.
            text = text.split('#[cfg(test)]')[0]
            # Comments name modules without depending on them.
            text = re.sub(r'//[^\n]*', '', text)
            for m in re.finditer(r'crate::([a-z_][a-z0-9_]*)', text):
                dep = m.group(1)
                if dep != mod:
                    graph.setdefault(mod, set()).add(dep)
            graph.setdefault(mod, set())
    return graph

def cycles(graph):
    found, state, stack = [], {}, []
    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if d not in graph:
                continue
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2
    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found

def main():
    crates = sys.argv[1:] or ['proto', 'store', 'controlplane', 'agent', 'chaos', 'cli']
    bad = False
    for c in crates:
        src = os.path.join(c, 'src')
        if not os.path.isdir(src):
            continue
        cs = cycles(top_modules(src))
        if cs:
            bad = True
            for cyc in cs:
                print(f'{c}: cycle: ' + ' -> '.join(cyc))
        else:
            print(f'{c}: no cycles between top-level modules')
    sys.exit(1 if bad else 0)

main()
